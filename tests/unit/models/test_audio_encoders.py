"""Audio part: log-mel front end, sinc filters, VAD-gated pooling, wav2vec2 freezing and loading."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from veracity.models import create_detector
from veracity.models.audio import W2V_TINY, AudioBranch, LogMel, SincConv, mel_filterbank
from veracity.models.layers import AttentionPool, resample_mask


def _tone(hz: float, n: int = 8000, sr: int = 16000) -> torch.Tensor:
    return torch.sin(2 * math.pi * hz * torch.arange(n) / sr)[None]


def test_mel_filterbank_is_triangular_and_ordered():
    fb = mel_filterbank(16000, 512, 20)
    assert fb.shape == (257, 20)
    assert fb.min() >= 0 and fb.max() <= 1 + 1e-6
    peaks = fb.argmax(0)
    assert (np.diff(peaks) > 0).all()  # centres rise with the band index


@pytest.mark.parametrize("hz", [300.0, 1000.0, 4000.0])
def test_log_mel_puts_a_tone_in_the_right_band(hz):
    mel = LogMel(16000, n_mels=40)
    band = int(mel(_tone(hz)).mean(-1).argmax())
    fb = mel_filterbank(16000, 512, 40, 20.0)
    centre_hz = fb[:, band].argmax() * 16000 / 512
    assert abs(centre_hz - hz) / hz < 0.25


def test_sinc_filters_are_band_pass_and_learnable():
    conv = SincConv(8, 129, 16000)
    filt = conv.filters()[:, 0].detach()
    low = (conv.min_low_hz + conv.low_hz.abs() * 1000).squeeze(1)
    high = low + conv.min_band_hz + conv.band_hz.abs().squeeze(1) * 1000
    spec = torch.fft.rfft(filt, n=4096).abs()
    peak_hz = spec.argmax(-1).float() * 16000 / 4096
    # Each filter's response peaks inside its own band (allowing for the window's leakage).
    assert ((peak_hz >= low - 100) & (peak_hz <= high + 100)).all()
    conv(torch.randn(2, 1, 1000)).square().mean().backward()
    assert conv.low_hz.grad.abs().sum() > 0 and conv.band_hz.grad.abs().sum() > 0


def test_resample_mask_gives_voiced_share():
    m = torch.tensor([[1, 1, 0, 0, 1, 0]], dtype=torch.bool)
    assert torch.allclose(resample_mask(m, 3), torch.tensor([[1.0, 0.0, 0.5]]))


def test_gated_pooling_weights():
    x = torch.randn(2, 4, 3)
    pool = AttentionPool(3)
    gate = torch.tensor([[1.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0]])
    w = pool.weights(x, gate)
    assert torch.allclose(w.sum(-1), torch.ones(2))
    assert w[0, 1] == 0  # unvoiced step left out
    assert torch.allclose(w[1], pool.weights(x)[1])  # nothing voiced: ungated fallback


def test_vad_gating_of_the_audio_branch(contract):
    branch = AudioBranch(contract, "logmel", dict(n_mels=16, channels=[8, 8]), dim=8, pool="mean").eval()
    audio = 0.1 * torch.randn(2, contract.audio_samples_per_window)
    n_hops = audio.shape[1] // 160
    voiced = torch.ones(2, n_hops, dtype=torch.bool)
    half = voiced.clone()
    half[:, n_hops // 2:] = False
    with torch.no_grad():
        tokens, pooled_all = branch(audio, voiced)
        _, pooled_half = branch(audio, half)
        _, pooled_none = branch(audio, torch.zeros_like(voiced))
        _, pooled_ungated = branch(audio, None)
    assert torch.allclose(pooled_all, tokens.mean(1), atol=1e-6)  # all voiced == plain mean
    assert not torch.allclose(pooled_half, pooled_all)  # the mask changes the pooling
    assert torch.allclose(pooled_none, pooled_ungated)  # no voice: fall back to the mean
    # With attention pooling, an all-voiced mask is the same as no gating.
    attn = AudioBranch(contract, "logmel", dict(n_mels=16, channels=[8, 8]), dim=8).eval()
    with torch.no_grad():
        assert torch.allclose(attn(audio, voiced)[1], attn(audio, None)[1], atol=1e-6)
        assert not torch.allclose(attn(audio, half)[1], attn(audio, None)[1])


def test_use_vad_false_ignores_the_mask(contract, make_batch):
    batch = make_batch()
    det = create_detector("tiny_audio", contract, use_vad=False).eval()
    with torch.no_grad():
        a = det(batch).logits
        batch.vad = ~batch.vad
        assert torch.equal(a, det(batch).logits)


def test_rawnet_token_rate(contract):
    det = create_detector("tiny_rawnet", contract)
    enc = det.branch.encoder
    n = contract.audio_samples_per_window
    assert enc(torch.randn(1, n)).shape[1] == n // 3 ** (len(det.config["encoder_kwargs"]["channels"]) + 1)


def test_wav2vec2_freezing(contract):
    det = create_detector("tiny_wav2vec2", contract,
                          encoder_kwargs=dict(w2v_config=W2V_TINY, freeze_feature_encoder=True, freeze_layers=1))
    model = det.branch.encoder.model
    assert not any(p.requires_grad for p in model.feature_extractor.parameters())
    assert not any(p.requires_grad for p in model.encoder.layers[0].parameters())
    assert all(p.requires_grad for p in model.encoder.layers[1].parameters())
    assert all(p.requires_grad for p in det.head.parameters())
    plain = create_detector("tiny_wav2vec2", contract)
    assert all(p.requires_grad for p in plain.parameters())
    with pytest.raises(ValueError, match="freeze_layers"):
        create_detector("tiny_wav2vec2", contract, encoder_kwargs=dict(w2v_config=W2V_TINY, freeze_layers=5))


def test_wav2vec2_local_checkpoint_sets_the_architecture(tmp_path, contract, batch):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    cfg = Wav2Vec2Config(**{**W2V_TINY, "hidden_size": 32, "intermediate_size": 64})
    src = Wav2Vec2Model(cfg)
    src.save_pretrained(str(tmp_path))
    det = create_detector("tiny_wav2vec2", contract, pretrained=tmp_path)
    model = det.branch.encoder.model
    assert model.config.hidden_size == 32
    assert det.config["encoder_kwargs"]["w2v_config"]["hidden_size"] == 32
    assert torch.equal(model.encoder.layers[1].attention.q_proj.weight, src.encoder.layers[1].attention.q_proj.weight)
    # The recorded config rebuilds the checkpoint's architecture without the checkpoint.
    twin = create_detector(det.name, det.contract, **det.config)
    twin.load_state_dict(det.state_dict(), strict=True)
    with pytest.raises(ValueError, match="wav2vec2"):
        create_detector("tiny_audio", contract, pretrained=tmp_path)
