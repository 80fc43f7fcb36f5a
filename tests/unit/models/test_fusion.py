"""Fusion: missing-modality path, modality dropout, sub-config overrides, aux logits."""

from __future__ import annotations

import pytest
import torch

from veracity.models import create_detector

NO_DROPOUT = dict(dropout=0.0, video={"dropout": 0.0})


@pytest.mark.parametrize("name", ["tiny_fusion", "tiny_fusion_concat"])
def test_missing_modalities_take_the_learned_path(name, contract, make_batch):
    det = create_detector(name, contract).eval()
    b = 2
    full = make_batch(b=b)
    no_audio = make_batch(b=b, audio_present=torch.zeros(b, dtype=torch.bool))
    no_video = make_batch(b=b, video_present=torch.zeros(b, dtype=torch.bool))
    with torch.no_grad():
        out_full, out_na, out_nv = det(full), det(no_audio), det(no_video)
    for out in (out_na, out_nv):
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.features).all()
        assert not torch.allclose(out.logits, out_full.logits)
    # Absent audio means the learned token, whatever the (ignored) waveform holds.
    other = make_batch(b=b, seed=5, audio_present=torch.zeros(b, dtype=torch.bool))
    other.video, other.flow = no_audio.video, no_audio.flow
    with torch.no_grad():
        assert torch.allclose(det(other).logits, out_na.logits, atol=1e-6)


def test_absent_tensors_are_missing_modalities(contract, make_batch):
    det = create_detector("tiny_fusion", contract).eval()
    batch = make_batch()
    batch.audio = batch.vad = None
    with torch.no_grad():
        out = det(batch)
        flagged = det(make_batch(audio_present=torch.zeros(2, dtype=torch.bool)))
    assert set(out.aux) == {"video"}
    assert torch.isfinite(out.logits).all()
    # Same video, audio missing either way: same fused prediction (the audio branch is unused).
    assert torch.allclose(out.logits, flagged.logits, atol=1e-5)
    batch.video = None
    with pytest.raises(ValueError, match="neither"):
        det(batch)


def test_aux_logits(contract, batch):
    out = create_detector("tiny_fusion", contract)(batch)
    assert set(out.aux) == {"video", "audio", "sync"}
    out = create_detector("tiny_fusion_concat", contract)(batch)
    assert set(out.aux) == {"video", "audio"}


def test_drop_modalities_rules(contract):
    det = create_detector("tiny_fusion", contract, modality_dropout=1.0)
    vp = torch.tensor([True, True, False])
    ap = torch.tensor([True, False, True])
    det.train()
    v, a = det.drop_modalities(vp, ap)
    # p = 1: video goes where both are there; a sample's only modality is never dropped.
    assert v.tolist() == [False, True, False] and a.tolist() == [True, False, True]
    det.eval()
    v, a = det.drop_modalities(vp, ap)
    assert torch.equal(v, vp) and torch.equal(a, ap)


def test_modality_dropout_only_in_training(contract, make_batch):
    torch.manual_seed(0)
    det = create_detector("tiny_fusion", contract, modality_dropout=1.0, **NO_DROPOUT)
    full = make_batch()
    no_video = make_batch(video_present=torch.zeros(2, dtype=torch.bool))
    det.train()
    dropped = det(full).logits
    det.modality_dropout = 0.0
    assert torch.allclose(dropped, det(no_video).logits, atol=1e-6)  # dropout = the missing path
    assert not torch.allclose(dropped, det(full).logits)
    det.eval()
    with torch.no_grad():
        base = det(full).logits
        det.modality_dropout = 1.0
        assert torch.equal(det(full).logits, base)  # eval: no dropout


def test_sub_configs_merge_one_level(contract):
    det = create_detector("tiny_fusion", contract, video={"temporal": "mean"})
    assert det.config["video"]["temporal"] == "mean"
    assert det.config["video"]["backbone"] == "resnet10t"  # other keys kept
    det = create_detector("tiny_fusion", contract, sync=False)
    assert det.sync is None and det.config["sync"] is False
    twin = create_detector(det.name, contract, **det.config)  # stays off when rebuilt
    assert twin.sync is None
    det = create_detector("tiny_fusion_concat", contract, sync=True)
    assert det.sync is not None
    with pytest.raises(ValueError, match="fusion"):
        create_detector("tiny_fusion", contract, fusion="sum")
