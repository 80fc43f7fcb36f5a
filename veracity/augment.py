"""Training-time augmentation of windows (training split only).

Video: horizontal flip (flow's x component flips sign with it), random resized crop,
colour jitter, JPEG re-compression and sensor noise. Audio: additive noise at a random
SNR, gain, and a time shift small enough (<= 20 ms) not to turn a real clip into an
out-of-sync one, which would teach the lip-sync member the wrong thing.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from veracity.contract import DataContract


class Augment:
    """Callable for :class:`veracity.data.WindowDataset` ``transform``.

    Args:
        contract: normalisation constants (augmentations work in pixel space).
        p: probability of each augmentation.
    """

    def __init__(self, contract: DataContract, p: float = 0.5, jpeg: bool = True):
        self.mean = torch.tensor(contract.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(contract.std).view(1, 3, 1, 1)
        self.sample_rate = contract.sample_rate
        self.p = p
        self.jpeg = jpeg

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        video = sample["video"] * self.std + self.mean  # back to [0, 1] pixels
        flow = sample.get("flow")
        t, _, h, w = video.shape
        if rng.random() < self.p:
            video = video.flip(-1)
            if flow is not None:
                flow = flow.flip(-1)
                flow = torch.stack([-flow[:, 0], flow[:, 1]], dim=1)
        if rng.random() < self.p:
            scale = rng.uniform(0.8, 1.0)
            ch, cw = max(2, int(h * scale)), max(2, int(w * scale))
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            video = F.interpolate(video[:, :, y0 : y0 + ch, x0 : x0 + cw], size=(h, w), mode="bilinear", align_corners=False)
        if rng.random() < self.p:
            b, c, s = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2), rng.uniform(0.7, 1.3)
            gray = video.mean(dim=1, keepdim=True)
            video = (gray + (video - gray) * s)
            video = (video - video.mean()) * c + video.mean() * b
        if self.jpeg and rng.random() < self.p:
            q = int(rng.integers(30, 90))
            frames = (video.clamp(0, 1) * 255).byte().permute(0, 2, 3, 1).numpy()
            out = []
            for f in frames:
                ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(f[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, q])
                out.append(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy())
            video = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255.0
        if rng.random() < self.p:
            video = video + torch.from_numpy(rng.normal(0, rng.uniform(0.005, 0.03), video.shape).astype(np.float32))
        sample["video"] = (video.clamp(0, 1) - self.mean) / self.std
        sample["flow"] = flow

        audio = sample["audio"].numpy().copy()
        if sample.get("audio_present", True) and len(audio):
            if rng.random() < self.p:
                shift = int(rng.integers(-self.sample_rate // 50, self.sample_rate // 50 + 1))
                audio = np.roll(audio, shift)
            if rng.random() < self.p:
                audio = audio * float(10 ** (rng.uniform(-6, 6) / 20))
            if rng.random() < self.p:
                rms = float(np.sqrt(np.mean(audio**2))) + 1e-8
                snr = rng.uniform(15, 40)
                audio = audio + rng.normal(0, rms / 10 ** (snr / 20), audio.shape).astype(np.float32)
            sample["audio"] = torch.from_numpy(np.clip(audio, -1, 1).astype(np.float32))
        return sample


def self_blend(video: torch.Tensor, contract: DataContract, generator: torch.Generator | None = None) -> torch.Tensor:
    """Self-blended pseudo-fakes (Shiohara & Yamasaki, CVPR 2022) from real face windows.

    Each window's crops are blended with an altered copy of themselves through a soft
    elliptical mask: the inner face (as a face swap replaces it) or the mouth (as
    reenactment re-renders it). The copy is resampled (resolution loss), colour shifted
    (imperfect colour transfer), blurred (mouth) and slightly misaligned, frame by frame.
    Identity, pose, motion and audio stay those of the real window, so the only thing that
    separates it from its source is the blending trace: a detector trained on these pairs
    has to learn that trace instead of who the training identities are. Mask and
    alteration are drawn per window and kept over its frames, as a swap keeps its
    settings over a clip.

    Args:
        video: (B, T, 3, S, S) normalised crops of real faces.
        contract: normalisation constants.
        generator: random source (reproducible training).

    Returns:
        The blended windows, same shape and normalisation.
    """
    b, t, _, s, _ = video.shape
    dev = video.device

    def u(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(dev)

    mean = torch.tensor(contract.mean, device=dev).view(1, 1, 3, 1, 1)
    std = torch.tensor(contract.std, device=dev).view(1, 1, 3, 1, 1)
    px = video.float() * std + mean
    mouth = u(b) < 0.25

    # The altered source, per window.
    src = []
    for i in range(b):
        x = px[i]
        if mouth[i]:
            x = gaussian_blur(x.reshape(1, t * 3, s, s), 0.6 + 0.8 * u(1), radius=2).reshape(t, 3, s, s)
        else:
            side = max(8, int(round(s / float(1.3 + 1.0 * u(1)))))
            x = F.interpolate(F.interpolate(x, size=(side, side), mode="area"), size=(s, s), mode="bilinear",
                              align_corners=False)
        src.append(x)
    src = torch.stack(src)
    src = src + (u(b, 1, 3, 1, 1) - 0.5) * 0.12 * (~mouth).view(b, 1, 1, 1, 1)
    # Misalignment: a per-window offset plus per-frame jitter, in pixels.
    shift = (u(b, 1, 2) - 0.5) * 2.0 + torch.randn(b, t, 2, generator=generator).to(dev) * 0.4
    theta = torch.zeros(b * t, 2, 3, device=dev)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = (shift * 2.0 / s).reshape(b * t, 2)
    grid = F.affine_grid(theta, [b * t, 3, s, s], align_corners=False)
    src = F.grid_sample(src.reshape(b * t, 3, s, s), grid, padding_mode="border",
                        align_corners=False).reshape(b, t, 3, s, s)

    # The mask: an ellipse around the inner face or the mouth, feathered by a random width.
    ys, xs = torch.meshgrid((torch.arange(s, device=dev) + 0.5) / s, (torch.arange(s, device=dev) + 0.5) / s,
                            indexing="ij")
    cx = 0.5 + (u(b) - 0.5) * 0.08
    cy = torch.where(mouth, 0.76 + (u(b) - 0.5) * 0.06, 0.58 + (u(b) - 0.5) * 0.08)
    ax = torch.where(mouth, 0.13 + 0.06 * u(b), 0.22 + 0.08 * u(b))
    ay = torch.where(mouth, 0.07 + 0.04 * u(b), 0.27 + 0.08 * u(b))
    r = torch.sqrt(((xs - cx.view(b, 1, 1)) / ax.view(b, 1, 1)) ** 2 + ((ys - cy.view(b, 1, 1)) / ay.view(b, 1, 1)) ** 2)
    soft = 0.03 + 0.2 * u(b)
    mask = torch.sigmoid((1.0 - r) / soft.view(b, 1, 1))
    mask = (mask * torch.where(u(b) < 0.75, 1.0, 0.5 + 0.5 * u(b)).view(b, 1, 1)).view(b, 1, 1, s, s)
    out = px * (1 - mask) + src * mask
    return ((out.clamp(0, 1) - mean) / std).to(video.dtype)


def capture_blur(video: torch.Tensor, max_sigma: float, p: float = 0.5,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Whole-crop Gaussian blur of random strength: lens softness that says nothing of the label.

    Cameras differ in sharpness, and a soft real face has lost the same fine texture that a
    resampled (swapped, re-rendered) face loses. A detector that reads absolute sharpness
    calls soft real faces fake; measured on the default corpus, the capture softness of a
    real clip correlated 0.54 with the video member's score. Blurring the whole crop, real
    and fake (and self-blended twin) alike, leaves only the *relative* trace, an inner face
    softer than its surroundings, to separate them. One sigma per window (a clip keeps its
    camera), drawn uniformly from [0, ``max_sigma``] crop pixels, with probability ``p``.

    Args:
        video: (B, T, 3, S, S) normalised crops.
        max_sigma: largest blur sigma, in crop pixels (0 returns the input).
        p: probability that a window is blurred.
        generator: random source (reproducible training).

    Returns:
        The windows, same shape and normalisation.
    """
    if max_sigma <= 0 or p <= 0:
        return video
    b, t, c, s, _ = video.shape
    dev = video.device
    on = torch.rand(b, generator=generator) < p
    sigma = (torch.rand(b, generator=generator) * max_sigma).clamp_min(1e-3)
    if not bool(on.any()):
        return video
    # sigma 0 is the identity kernel: windows left alone come out bit for bit. Normalisation
    # is affine per channel, so blurring normalised values equals blurring pixels.
    sigma = torch.where(on, sigma, torch.zeros_like(sigma)).to(dev)
    x = gaussian_blur(video.float().reshape(b, t * c, s, s), sigma, radius=max(1, math.ceil(3 * max_sigma)))
    return x.reshape(b, t, c, s, s).to(video.dtype)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor | float, radius: int) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, S, S) images, one sigma per image, replicate borders.

    Args:
        x: the images.
        sigma: (N,) standard deviations in pixels, or one for all; 0 leaves an image as is.
        radius: kernel half-width in pixels (the kernel has 2 * radius + 1 taps).

    Returns:
        The blurred images, same shape.
    """
    n, c, h, w = x.shape
    taps = torch.arange(-radius, radius + 1, device=x.device)
    sig = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1).expand(n, 1)
    g = torch.exp(-0.5 * (taps / sig.clamp_min(1e-3)) ** 2)
    g = torch.where(sig > 0, g / g.sum(dim=1, keepdim=True), (taps == 0).float())
    k = g.repeat_interleave(c, dim=0).to(x.dtype)  # one depthwise kernel per (image, channel)
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, 0, 0), mode="replicate")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.pad(y, (0, 0, radius, radius), mode="replicate")
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.reshape(n, c, h, w)
