"""Grad-CAM, overlays and audio anomaly segments (veracity.explain)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from veracity.config import ContractConfig
from veracity.explain import audio_anomaly_segments, cam_layer, grad_cam, member_grad_cam, overlay
from veracity.models import create_detector
from veracity.models.base import Batch

CONTRACT = ContractConfig(fps=12.5, frames_per_window=8, face_size=32).build()


class RedSpotter(nn.Module):
    """A hand-set CNN whose score is the amount of pure red in the image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1 / 9  # red minus the other channels
            self.conv.weight[0, 1:] = -1 / 9
            self.conv.weight[1, :] = 1 / 27  # brightness: a distractor the score ignores
        self.features = nn.Sequential(self.conv, nn.ReLU())
        self.head = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.head.weight[:] = torch.tensor([[1.0, 0.0]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3))).squeeze(-1)


def _planted(where: tuple[slice, slice] | None) -> torch.Tensor:
    img = torch.full((3, 32, 32), 0.5)
    img[:, 24:30, 2:8] = 1.0  # a bright white patch that is not red
    if where is not None:
        img[:, where[0], where[1]] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    return img


def test_grad_cam_points_at_the_planted_signal() -> None:
    model = RedSpotter().eval()
    spots = [(slice(3, 10), slice(20, 28)), (slice(18, 26), slice(12, 18))]  # top right, lower middle
    x = torch.stack([_planted(spots[0]), _planted(spots[1]), _planted(None)])
    heat = grad_cam(model.features, lambda: model(x), rows=[0, 1, 2], size=(32, 32))
    assert heat.shape == (3, 32, 32) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() <= 1
    for h, (ys, xs) in zip(heat[:2], spots, strict=True):
        inside = np.zeros_like(h, bool)
        inside[ys, xs] = True
        y, x_ = np.unravel_index(int(np.argmax(h)), h.shape)
        assert inside[y, x_], (y, x_)  # the peak lies on the red patch, not on the white one
        assert h.max() == pytest.approx(1.0)
        assert h[inside].mean() > 5 * h[~inside].mean()
    assert np.all(heat[2] == 0)  # nothing red: no evidence anywhere


def _window_batch(b: int = 2, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    t, s = CONTRACT.frames_per_window, CONTRACT.face_size
    return Batch(video=torch.randn(b, t, 3, s, s, generator=g), flow=torch.randn(b, t, 2, s // 2, s // 2, generator=g),
                 audio=torch.zeros(b, CONTRACT.audio_samples_per_window), video_present=torch.ones(b, dtype=torch.bool),
                 audio_present=torch.ones(b, dtype=torch.bool))


@pytest.mark.parametrize("stride", [1, 2])
def test_member_grad_cam_on_a_video_detector(stride: int) -> None:
    # Seed 1: a random network whose frame scores have positive evidence somewhere (with
    # others, e.g. seed 0, every ReLU'd map can be zero, which is a legitimate "nothing here").
    torch.manual_seed(1)
    model = create_detector("tiny_video", CONTRACT, frame_stride=stride).eval()
    heat = member_grad_cam(model, _window_batch(), frames=[0, 5])
    assert heat.shape == (2, 32, 32) and np.isfinite(heat).all()
    assert heat.min() >= 0 and heat.max() <= 1
    for h in heat:
        assert h.max() == pytest.approx(1.0) and h.std() > 0.05  # a map with structure, not one coarse cell
    # 32 px crops: the chosen stage keeps at least 4x4 cells (the last stage has 1x1).
    layer = cam_layer(model.branch.frames, 32)
    seen: dict[str, torch.Size] = {}

    def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        seen["shape"] = out.shape

    handle = layer.register_forward_hook(hook)
    with torch.no_grad():
        model(_window_batch())
    handle.remove()
    assert seen["shape"][-1] >= 4
    assert all(p.grad is None for p in model.parameters())  # explaining leaves the weights untouched


def test_member_grad_cam_needs_a_face_model() -> None:
    model = create_detector("tiny_audio", CONTRACT).eval()
    with pytest.raises(ValueError, match="no frame encoder"):
        member_grad_cam(model, _window_batch(1), frames=[0])


def test_overlay_png_shows_the_hot_spot(tmp_path: Path) -> None:
    crop = np.full((32, 32, 3), 128, np.uint8)
    heat = np.zeros((32, 32), np.float32)
    heat[4:12, 20:28] = 1.0
    path = overlay(crop, heat, tmp_path / "sub" / "o.png", scale=4)
    img = cv2.imread(str(path))  # BGR
    assert img.shape == (128, 128, 3)
    hot, cold = img[32, 96].astype(int), img[110, 10].astype(int)
    assert hot[2] > hot[0] + 40  # JET: hot is red
    assert cold[0] > cold[2] + 40  # cold is blue


def test_audio_anomaly_segments_merge_overlapping_windows() -> None:
    spans = [(0.0, 1.28), (0.64, 1.92), (1.28, 2.56), (3.0, 4.0)]
    segs = audio_anomaly_segments(spans, np.array([0.9, 0.95, 0.1, 0.99]), threshold=0.8)
    assert segs == [{"start_s": 0.0, "end_s": 1.92, "max_prob": 0.95}, {"start_s": 3.0, "end_s": 4.0, "max_prob": 0.99}]
    assert audio_anomaly_segments(spans, np.zeros(4), 0.8) == []
