"""Training-time augmentation: self-blended pseudo-fakes and capture softness (veracity.augment)."""

import cv2
import numpy as np
import torch

from veracity.augment import capture_blur, gaussian_blur, self_blend
from veracity.config import ContractConfig
from veracity.models.base import Batch
from veracity.training import _with_self_blends


def _faces(b=6, t=4, s=32, seed=0):
    """Normalised windows of a textured 'face' (fine detail the blend must remove) on a flat background."""
    c = ContractConfig(face_size=s, frames_per_window=t).build()
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


def _sharpness(x):
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3, 4))


def test_capture_blur_softens_whole_windows_and_keeps_the_mean():
    _, video = _faces(b=8)
    out = capture_blur(video, 1.5, p=1.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == video.shape and out.dtype == video.dtype
    # No window is sharper, most are much softer, and blurring moves no colour.
    assert (_sharpness(out) <= _sharpness(video) + 1e-6).all()
    assert float((_sharpness(out) / _sharpness(video)).median()) < 0.8
    assert torch.allclose(out.mean(dim=(-1, -2)), video.mean(dim=(-1, -2)), atol=0.02)
    # One sigma per window, not one per batch: the windows lose different amounts.
    loss = _sharpness(out) / _sharpness(video)
    assert float(loss.max() - loss.min()) > 0.05


def test_capture_blur_leaves_unpicked_windows_alone_and_is_off_at_zero():
    _, video = _faces(b=16)
    out = capture_blur(video, 1.0, p=0.5, generator=torch.Generator().manual_seed(3))
    same = [(torch.equal(out[i], video[i])) for i in range(16)]
    assert 0 < sum(same) < 16  # some windows untouched, some blurred
    assert torch.equal(capture_blur(video, 0.0, p=1.0), video)
    a = capture_blur(video, 1.0, generator=torch.Generator().manual_seed(7))
    b = capture_blur(video, 1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_gaussian_blur_matches_opencv_per_image_and_sigma_zero_is_identity():
    rng = np.random.default_rng(0)
    imgs = rng.random((3, 2, 20, 24)).astype(np.float32)
    sigmas = [0.7, 1.3, 0.0]
    out = gaussian_blur(torch.from_numpy(imgs), torch.tensor(sigmas), radius=3).numpy()
    for i, sg in enumerate(sigmas[:2]):
        for ch in range(2):
            ref = cv2.GaussianBlur(imgs[i, ch], (7, 7), sg, borderType=cv2.BORDER_REPLICATE)
            np.testing.assert_allclose(out[i, ch], ref, atol=1e-5)
    assert np.array_equal(out[2], imgs[2])
