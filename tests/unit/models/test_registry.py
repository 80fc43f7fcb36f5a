"""The detector registry and factory, and the contract every registered detector keeps."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from veracity.config import ContractConfig, load_params
from veracity.contract import DataContract
from veracity.models import (
    Detector,
    DetectorOutput,
    create_detector,
    detector_info,
    list_detectors,
    load_detector,
    register_detector,
    save_detector,
)
from veracity.models import registry as reg
from veracity.models.video import VideoDetector

DEFAULTS = ["video_specialist", "audio_specialist", "av_fusion", "lipsync"]
TINY = list_detectors("tiny_*")
NAMES = TINY + DEFAULTS


def _loss(out: DetectorOutput) -> torch.Tensor:
    return out.logits.sum() + sum(v.sum() for v in (out.aux or {}).values())


def test_default_and_tiny_variants_are_registered():
    names = set(list_detectors())
    assert set(DEFAULTS) <= names
    assert {"tiny_video", "tiny_audio", "tiny_wav2vec2", "tiny_rawnet", "tiny_logmel", "tiny_fusion",
            "tiny_lipsync"} <= set(TINY)
    assert all(n.startswith("tiny_") for n in TINY)
    assert list_detectors("*") == sorted(names)


@pytest.mark.parametrize(("name", "modality"), [("video_specialist", "video"), ("audio_specialist", "audio"),
                                                ("av_fusion", "av"), ("lipsync", "av"), ("tiny_wav2vec2", "audio")])
def test_detector_info(name, modality):
    info = detector_info(name)
    assert info["modality"] == modality
    assert info["description"]


def test_unknown_name_suggests_close_matches():
    with pytest.raises(KeyError, match="tiny_video"):
        create_detector("tiny_vidoe")
    with pytest.raises(KeyError, match="unknown detector"):
        detector_info("no_such_thing_at_all")


def test_unknown_override_is_named(contract):
    with pytest.raises(TypeError, match="backbonez"):
        create_detector("tiny_video", contract, backbonez="resnet10t")


def test_none_overrides_fall_back_to_defaults(contract):
    det = create_detector("tiny_video", contract, temporal=None, dim=None)
    assert det.config["temporal"] == "tconv" and det.config["dim"] == 16
    det = create_detector("tiny_video", contract, temporal="mean")
    assert det.config["temporal"] == "mean"


def test_default_contract_and_metadata():
    det = create_detector("tiny_lipsync")
    # The factory's default contract is ContractConfig's, the pipeline's code defaults,
    # not a second set of values (they once disagreed on face_margin).
    assert det.contract == ContractConfig().build() == load_params(None).contract.build()
    assert det.name == "tiny_lipsync" and det.modality == "av"
    assert isinstance(det, Detector) and det.training
    json.dumps(det.config)  # plain data only


def test_missing_pretrained_path(tmp_path, contract):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        create_detector("tiny_video", contract, pretrained=tmp_path / "nope.safetensors")


def test_pretrained_true_is_refused(contract):
    with pytest.raises(ValueError, match="local"):
        create_detector("tiny_video", contract, pretrained=True)


def test_register_infers_modality_and_rejects_duplicates(contract):
    @register_detector
    def _test_only_variant(contract: DataContract, **overrides) -> VideoDetector:
        """A variant registered by a test."""
        return reg.build(VideoDetector, contract, dict(backbone="test_efficientnet", use_flow=False,
                                                       temporal="mean", dim=8), overrides)

    try:
        assert detector_info("_test_only_variant") == {
            "name": "_test_only_variant", "modality": "video", "description": "A variant registered by a test."}
        with pytest.raises(ValueError, match="already registered"):
            register_detector(_test_only_variant)
    finally:
        reg._REGISTRY.pop("_test_only_variant", None)


# ------------------------------------------------------------ every tiny and default variant

@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(name, contract, batch):
    torch.manual_seed(0)
    det = create_detector(name, contract)
    out = det(batch)
    b, t = batch.size, contract.frames_per_window
    assert isinstance(out, DetectorOutput)
    assert out.logits.shape == (b,) and out.prob.shape == (b,)
    assert torch.isfinite(out.logits).all()
    assert ((out.prob >= 0) & (out.prob <= 1)).all()
    if det.modality == "audio":
        assert out.frame_scores is None
    else:
        assert out.frame_scores is not None and out.frame_scores.shape == (b, t)
        assert torch.isfinite(out.frame_scores).all()
    assert out.features is not None and out.features.shape[0] == b
    for v in (out.aux or {}).values():
        assert v.shape == (b,)
    _loss(out).backward()
    grads = [p.grad for p in det.parameters() if p.grad is not None]
    assert grads, "no parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_rebuild_from_config_and_safetensors_roundtrip(name, contract, batch, tmp_path):
    torch.manual_seed(0)
    det = create_detector(name, contract)
    det(batch)  # one training-mode pass, so BatchNorm statistics are no longer the defaults
    det.eval()
    path = tmp_path / "weights.safetensors"
    save_file(det.state_dict(), str(path))
    twin = create_detector(det.name, det.contract, **det.config)
    assert twin.config == det.config
    twin.load_state_dict(load_file(str(path)), strict=True)
    twin.eval()
    with torch.no_grad():
        a, b = det(batch), twin(batch)
    assert torch.equal(a.logits, b.logits)
    if a.frame_scores is not None:
        assert torch.equal(a.frame_scores, b.frame_scores)


def test_save_and_load_detector_keep_name_config_and_contract(tmp_path, contract, batch):
    det = create_detector("tiny_fusion", contract, fusion="concat").eval()
    path = save_detector(det, tmp_path / "det.safetensors")
    back = load_detector(path)
    assert (back.name, back.config, back.contract) == (det.name, det.config, det.contract)
    assert not back.training
    with torch.no_grad():
        assert torch.equal(back(batch).logits, det(batch).logits)


def test_pretrained_whole_detector_file(tmp_path, contract, batch):
    src = create_detector("tiny_audio", contract).eval()
    path = tmp_path / "audio.safetensors"
    save_file(src.state_dict(), str(path))
    det = create_detector("tiny_audio", contract, pretrained=path).eval()
    with torch.no_grad():
        assert torch.equal(det(batch).logits, src(batch).logits)


def test_pretrained_weights_that_fit_nothing(tmp_path, contract):
    path = tmp_path / "audio.safetensors"
    save_file(create_detector("tiny_audio", contract).state_dict(), str(path))
    with pytest.raises(ValueError, match="no pretrained backbone"):
        create_detector("tiny_lipsync", contract, pretrained=path)
    with pytest.raises(ValueError, match="do not fit"):
        create_detector("tiny_video", contract, pretrained=path)
