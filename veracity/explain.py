"""Why a video got its call: Grad-CAM on face crops, audio anomaly segments, modality agreement.

* **Grad-CAM** (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
  Gradient-based Localization", ICCV 2017): for one frame of a window, the gradient of a
  video member's score for that frame with respect to a convolutional feature map of its
  frame encoder, averaged over space, weighs the map's channels; the ReLU of the weighted
  sum, upsampled to the crop and scaled to [0, 1], shows where the evidence lies. The
  score is the member's per-frame logit (``DetectorOutput.frame_scores``) when it has one,
  else its window logit.
* Layer choice: the classic choice is the last convolutional stage, but on 32-64 px face
  crops timm backbones reduce that stage to 1x1 or 2x2, which localises nothing. We take
  the deepest stage of the backbone's ``feature_info`` whose map is at least
  ``min_cells`` cells wide (4 by default), the usual trade between semantics and
  resolution.
* **Audio anomaly segments**: stretches where an audio member's calibrated probability of
  the window, scored on its own, reaches the bundle's FAKE threshold; overlapping windows
  are merged.
* **Modality agreement** comes from :func:`veracity.decision.agreement`.

:mod:`veracity.analyzer` calls these for ``analyze(..., explain=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from veracity.models.base import Batch


def find_frame_encoder(model: nn.Module) -> tuple[nn.Module, int] | None:
    """The frame encoder of a member (video or audio-visual) and its frame stride.

    Returns:
        ``(FrameEncoder, frame_stride)``, or None for a member that does not look at faces.
    """
    from veracity.models.video import FrameEncoder, VideoBranch

    for mod in model.modules():
        if isinstance(mod, VideoBranch):
            return mod.frames, int(mod.frame_stride)
    for mod in model.modules():
        if isinstance(mod, FrameEncoder):
            return mod, 1
    return None


def cam_layer(encoder: nn.Module, crop_size: int, min_cells: int = 4) -> nn.Module:
    """The backbone layer Grad-CAM reads: the deepest stage at least ``min_cells`` wide.

    Args:
        encoder: a :class:`veracity.models.video.FrameEncoder` (or any module with a
            timm ``backbone``), or a bare backbone.
        crop_size: side of the face crops fed to it.
        min_cells: smallest useful width of the feature map.
    """
    backbone = getattr(encoder, "backbone", encoder)
    info = getattr(backbone, "feature_info", None)
    stages: list[tuple[str, int]] = []
    if info:
        for entry in info:
            d = entry if isinstance(entry, dict) else {}
            if "module" in d and d.get("reduction"):
                stages.append((str(d["module"]), int(d["reduction"])))
    if stages:
        fine_enough = [s for s in stages if math.ceil(crop_size / s[1]) >= min_cells]
        name = (fine_enough or stages[:1])[-1][0]
        return backbone.get_submodule(name)
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(backbone).__name__} has no convolution for Grad-CAM")
    return convs[-1]


def grad_cam(layer: nn.Module, forward: Callable[[], torch.Tensor], rows: Sequence[int],
             size: tuple[int, int]) -> np.ndarray:
    """Grad-CAM heatmaps of ``layer`` for K scores.

    Args:
        layer: the module whose output (N, C, h, w) is explained.
        forward: runs the model and returns (K,) scores; score k must depend only on
            activation row ``rows[k]`` among the explained rows (one per image or window).
        rows: for each score, the row of the layer's output it is explained on.
        size: (height, width) of the heatmaps (the input image size).

    Returns:
        (K, height, width) float32 heatmaps in [0, 1] (all zero where nothing speaks for
        the score).
    """
    saved: dict[str, torch.Tensor] = {}

    def hook(_mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        if not isinstance(out, torch.Tensor) or out.ndim != 4:
            raise ValueError(f"Grad-CAM needs a (N, C, h, w) feature map, got {type(out).__name__}")
        saved["act"] = out

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            scores = forward()
            if "act" not in saved:
                raise RuntimeError("the Grad-CAM layer did not run in the forward pass")
            if not saved["act"].requires_grad:
                raise RuntimeError("no gradient can reach the Grad-CAM layer")
            # autograd.grad, not backward(): the model's parameters get no .grad as a side effect.
            (grad,) = torch.autograd.grad(scores.float().sum(), saved["act"])
    finally:
        handle.remove()
    act = saved["act"].detach()
    idx = torch.as_tensor(list(rows), dtype=torch.long, device=act.device)
    a, g = act[idx].float(), grad.detach()[idx].float()
    weights = g.mean(dim=(2, 3), keepdim=True)  # alpha_c: global-average-pooled gradients
    cam = torch.relu((weights * a).sum(dim=1, keepdim=True))
    cam = nn.functional.interpolate(cam, size=size, mode="bilinear", align_corners=False).squeeze(1)
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    cam = torch.where(peak > 1e-12, cam / peak, torch.zeros_like(cam))
    return cam.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)


def member_grad_cam(model: nn.Module, batch: Batch, frames: Sequence[int], min_cells: int = 4) -> np.ndarray:
    """Grad-CAM of a video member for one frame of each window of ``batch``.

    Args:
        model: the member (in eval mode); must contain a frame encoder.
        batch: B windows.
        frames: for each window, the frame (0 <= t < T) to explain.
        min_cells: see :func:`cam_layer`.

    Returns:
        (B, S, S) heatmaps in [0, 1].

    Raises:
        ValueError: the member has no frame encoder, or ``frames`` has the wrong length.
    """
    found = find_frame_encoder(model)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no frame encoder to explain")
    encoder, stride = found
    if batch.video is None:
        raise ValueError("the batch has no video")
    b, t, _, h, w = batch.video.shape
    if len(frames) != b:
        raise ValueError(f"one frame per window expected, got {len(frames)} for {b} windows")
    steps = -(-t // stride)  # frames the encoder actually sees per window
    rows = [i * steps + int(f) // stride for i, f in enumerate(frames)]
    layer = cam_layer(encoder, h, min_cells)
    device = next(model.parameters()).device
    video = batch.video.detach().to(device).requires_grad_(True)  # a graph even if weights are frozen
    feed = Batch(**{**vars(batch.to(device)), "video": video})
    pick = torch.as_tensor([int(f) for f in frames], device=device)

    def forward() -> torch.Tensor:
        out = model(feed)
        if out.frame_scores is not None:
            return out.frame_scores[torch.arange(b, device=device), pick]
        return out.logits

    return grad_cam(layer, forward, rows, (h, w))


def overlay(crop: np.ndarray, heat: np.ndarray, path: Path | str, scale: int = 4, alpha: float = 0.45) -> Path:
    """Write a PNG of an RGB face crop with a heatmap blended over it (JET colour map).

    Args:
        crop: (S, S, 3) uint8 RGB.
        heat: (S, S) values in [0, 1].
        path: the PNG to write (parents created).
        scale: upscaling of the crop, so a 64 px crop is viewable.
        alpha: weight of the heatmap.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = crop.shape[:2]
    size = (w * scale, h * scale)
    base = cv2.cvtColor(cv2.resize(np.ascontiguousarray(crop), size, interpolation=cv2.INTER_CUBIC), cv2.COLOR_RGB2BGR)
    hm = cv2.resize(np.clip(heat, 0, 1).astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap((hm * 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(base, 1 - alpha, colour, alpha, 0)
    if not cv2.imwrite(str(path), out):
        raise OSError(f"could not write {path}")
    return path


def merge_spans(spans: Sequence[tuple[float, float, float]], gap: float = 1e-6) -> list[dict[str, float]]:
    """Merge overlapping or touching ``(start, end, score)`` spans, keeping the max score."""
    out: list[dict[str, float]] = []
    for s, e, p in sorted(spans):
        if out and s <= out[-1]["end_s"] + gap:
            out[-1]["end_s"] = max(out[-1]["end_s"], float(e))
            out[-1]["max_prob"] = max(out[-1]["max_prob"], float(p))
        else:
            out.append({"start_s": float(s), "end_s": float(e), "max_prob": float(p)})
    return out


def audio_anomaly_segments(spans: Sequence[tuple[float, float]], probs: np.ndarray, threshold: float) -> list[dict]:
    """Time segments where the audio evidence alone reaches the FAKE threshold.

    Args:
        spans: (start_s, end_s) of each window.
        probs: (n_windows,) calibrated probability of the most suspicious audio member
            for each window scored on its own.
        threshold: the bundle's ``fake_at``.

    Returns:
        Merged segments ``{start_s, end_s, max_prob}`` in time order.
    """
    p = np.asarray(probs, dtype=np.float64)
    return merge_spans([(s, e, float(q)) for (s, e), q in zip(spans, p, strict=True) if q >= threshold])
