"""Training-time augmentation of windows (training split only).

Video: horizontal flip (flow's x component flips sign with it), random resized crop,
colour jitter, JPEG re-compression and sensor noise. Audio: additive noise at a random
SNR, gain, and a time shift small enough (<= 20 ms) not to turn a real clip into an
out-of-sync one, which would teach the lip-sync member the wrong thing.
"""

from __future__ import annotations

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
