"""Training-time augmentation: self-blended pseudo-fakes (veracity.augment.self_blend)."""

import numpy as np
import torch

from veracity.augment import self_blend
from veracity.contract import DataContract
from veracity.models.base import Batch
from veracity.training import _with_self_blends


def _faces(b=6, t=4, s=32, seed=0):
    """Normalised windows of a textured 'face' (fine detail the blend must remove) on a flat background."""
    c = DataContract(face_size=s, frames_per_window=t)
    rng = np.random.default_rng(seed)
    px = np.full((b, t, 3, s, s), 0.3, np.float32)
    yy, xx = np.mgrid[0:s, 0:s] / s
    inner = ((xx - 0.5) / 0.3) ** 2 + ((yy - 0.58) / 0.35) ** 2 < 1
    px[..., inner] = 0.6 + 0.15 * rng.standard_normal((b, t, 3, int(inner.sum())))
    mean = torch.tensor(c.mean).view(1, 1, 3, 1, 1)
    std = torch.tensor(c.std).view(1, 1, 3, 1, 1)
    return c, (torch.from_numpy(px).clamp(0, 1) - mean) / std


def test_self_blend_alters_the_inner_face_and_leaves_the_corners():
    c, video = _faces()
    out = self_blend(video, c, torch.Generator().manual_seed(0))
    assert out.shape == video.shape and out.dtype == video.dtype
    diff = (out - video).abs()
    s = video.shape[-1]
    centre = diff[..., s // 3: 2 * s // 3, s // 3: 2 * s // 3].mean()
    corners = diff[..., :3, :3].mean() + diff[..., :3, -3:].mean()
    assert centre > 0.05 and corners < 0.1 * centre
    # The blended centre lost fine detail: lower high-frequency energy than the source.
    def hf(x):
        return (x[..., 1:, :] - x[..., :-1, :]).abs()[..., s // 3: 2 * s // 3, s // 3: 2 * s // 3].mean()
    assert hf(out) < hf(video)


def test_self_blend_is_reproducible_for_a_seed():
    c, video = _faces()
    a = self_blend(video, c, torch.Generator().manual_seed(5))
    b = self_blend(video, c, torch.Generator().manual_seed(5))
    other = self_blend(video, c, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, other)


def test_training_appends_blended_twins_of_real_faces_only_as_video_fakes():
    c, video = _faces(b=4)
    n = video.shape[0]
    labels = torch.tensor([0.0, 1.0, 0.0, 0.0])
    video_labels = torch.tensor([0.0, 1.0, 0.0, 0.0])
    present = torch.tensor([True, True, True, False])  # the last window has no face
    batch = Batch(video=video, flow=None, audio=torch.zeros(n, 100), vad=None, video_present=present,
                  audio_present=torch.ones(n, dtype=torch.bool), label=labels, video_label=video_labels,
                  audio_label=torch.zeros(n))
    y, mask = video_labels.clone(), torch.ones(n)
    out, y2, mask2 = _with_self_blends(batch, y, mask, c, torch.Generator().manual_seed(0))
    assert out.video.shape[0] == n + 2  # windows 0 and 2: real faces that are present
    assert y2.tolist() == [0, 1, 0, 0, 1, 1] and mask2.tolist() == [1] * 6
    assert out.video_label[-2:].tolist() == [1, 1] and out.label[-2:].tolist() == [1, 1]
    assert not torch.equal(out.video[4], video[0])
