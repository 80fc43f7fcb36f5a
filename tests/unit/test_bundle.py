"""The bundle's checksums (veracity.bundle): a bundle that does not match is refused."""

import json

import pytest

from veracity.bundle import BundleError, verify_bundle
from veracity.lineage import sha256_file


def _bundle_dir(tmp_path):
    root = tmp_path / "b"
    (root / "members").mkdir(parents=True)
    (root / "members" / "m.safetensors").write_bytes(b"weights")
    spec = {"format": "veracity-bundle", "version": 1,
            "files": {"members/m.safetensors": sha256_file(root / "members" / "m.safetensors")}}
    (root / "bundle.json").write_text(json.dumps(spec))
    return root


def test_verify_bundle_accepts_a_matching_bundle(tmp_path):
    assert verify_bundle(_bundle_dir(tmp_path))["format"] == "veracity-bundle"


def test_verify_bundle_names_a_tampered_file(tmp_path):
    root = _bundle_dir(tmp_path)
    (root / "members" / "m.safetensors").write_bytes(b"weightz")
    with pytest.raises(BundleError, match=r"members/m\.safetensors does not match its sha256"):
        verify_bundle(root)


def test_verify_bundle_refuses_missing_and_unlisted_files(tmp_path):
    root = _bundle_dir(tmp_path)
    (root / "extra.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match="extra.bin is not listed"):
        verify_bundle(root)
    (root / "extra.bin").unlink()
    (root / "members" / "m.safetensors").unlink()
    with pytest.raises(BundleError, match="missing"):
        verify_bundle(root)
    with pytest.raises(BundleError, match="not a bundle"):
        verify_bundle(tmp_path / "nowhere")


def test_parts_with_the_same_weights_are_computed_once_per_batch_with_the_same_answers() -> None:
    import torch

    from veracity.bundle import SharedPart, share_parts
    from veracity.config import ContractConfig
    from veracity.models import create_detector
    from veracity.models.base import Batch

    c = ContractConfig(fps=12.5, frames_per_window=8, face_size=32).build()
    torch.manual_seed(0)
    video, sync, fusion = (create_detector(n, c).eval() for n in ("tiny_video", "tiny_lipsync", "tiny_fusion"))
    # The fusion member warm-started and frozen: its video branch and sync head are the others'.
    fusion.video.load_state_dict(video.branch.state_dict())
    fusion.sync.load_state_dict(sync.sync.state_dict())
    g = torch.Generator().manual_seed(1)
    s, n = c.face_size, c.audio_samples_per_window
    batch = Batch(video=torch.randn(3, 8, 3, s, s, generator=g), audio=torch.randn(3, n, generator=g) * 0.1)
    with torch.inference_mode():
        before = [m(batch).logits for m in (video, sync, fusion)]
    shared = share_parts([video, sync, fusion])
    assert len(shared) == 2 and video.branch is fusion.video and sync.sync is fusion.sync
    assert all(isinstance(p, SharedPart) for p in shared) and not isinstance(fusion.audio, SharedPart)
    calls = []
    video.branch.part.register_forward_hook(lambda *_: calls.append(1))
    with torch.inference_mode():
        after = [m(batch).logits for m in (video, sync, fusion)]
    assert len(calls) == 1  # the video branch ran for the video member, then was handed to the fusion
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    for p in shared:  # a new batch is computed again, never answered from the last one
        p.forget()
    with torch.inference_mode():
        video(Batch(video=batch.video.clone(), audio=batch.audio))
    assert len(calls) == 2
    video.branch(batch.video.requires_grad_(), None).__getitem__(1).sum().backward()  # gradients bypass the store
    assert len(calls) == 3 and batch.video.grad is not None
