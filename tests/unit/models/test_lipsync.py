"""Lip-sync head: offset similarities find the audio lag; mouth crop; stand-alone detector."""

from __future__ import annotations

import pytest
import torch

from veracity.models import create_detector
from veracity.models.lipsync import (
    SyncHead,
    offset_similarity,
    shifted_audio_negatives,
    sync_features,
)


@pytest.mark.parametrize("lag", [-2, -1, 0, 1, 2])
def test_offset_similarity_peaks_at_the_audio_lag(lag):
    g = torch.Generator().manual_seed(lag + 10)
    v = torch.randn(3, 12, 16, generator=g)
    a = torch.randn(3, 12, 16, generator=g)
    # Audio that lags the video by `lag` frames: a[t] = v[t - lag] wherever defined.
    for t in range(12):
        if 0 <= t - lag < 12:
            a[:, t] = v[:, t - lag]
    sims, valid = offset_similarity(v, a, max_offset=2)
    assert sims.shape == (3, 5, 12) and valid.shape == (5, 12)
    feats = sync_features(sims, valid)
    assert feats.shape == (3, 9)
    assert (feats[:, :5].argmax(1) == 2 + lag).all()
    assert torch.allclose(feats[:, 2 + lag], torch.ones(3), atol=1e-5)
    margin = feats[:, -1]
    assert ((margin > 0) if lag == 0 else (margin < 0)).all()  # SyncNet confidence


def test_mouth_region_is_the_lower_middle_of_the_crop(contract):
    head = SyncHead(contract, use_flow=False, mouth_box=(0.5, 1.0, 0.25, 0.75))
    video = torch.zeros(1, 2, 3, 32, 32)
    video[..., 16:, 8:24] = 1.0
    m = head.mouth(video, None)
    assert m.shape == (2, 3, 16, 16) and bool((m == 1).all())
    with pytest.raises(ValueError, match="mouth_box"):
        SyncHead(contract, mouth_box=(0.9, 0.5, 0.2, 0.8))


def test_lipsync_detector_needs_both_modalities(contract, batch):
    det = create_detector("tiny_lipsync", contract)
    out = det(batch)
    assert torch.equal(out.aux["sync"], out.logits)
    assert out.features.shape == (2, 2 * det.config["max_offset"] + 5)
    batch.audio = None
    with pytest.raises(ValueError, match="audio"):
        det(batch)


def test_shifted_audio_negatives(contract, batch):
    g = torch.Generator().manual_seed(0)
    neg = shifted_audio_negatives(batch, contract, min_shift=1, max_shift=1, generator=g)
    spf = int(contract.sample_rate / contract.fps)
    assert torch.equal(neg.video, batch.video)
    assert neg.label.tolist() == [1.0, 1.0] and neg.audio_label.tolist() == [0.0, 0.0]
    for a, orig in zip(neg.audio, batch.audio, strict=True):
        assert torch.equal(a, torch.roll(orig, spf)) or torch.equal(a, torch.roll(orig, -spf))
    assert neg.vad.shape == batch.vad.shape
