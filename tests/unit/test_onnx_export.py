"""ONNX export of members (veracity.onnx_export): the graph takes any number of windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from veracity.config import ContractConfig
from veracity.models import Batch, DetectorOutput, create_detector
from veracity.onnx_export import export_member, ort_session, run_session

SMALL = ContractConfig(frames_per_window=4, face_size=32).build()


def _batch(b: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    t, s, n = SMALL.frames_per_window, SMALL.face_size, SMALL.audio_samples_per_window
    return Batch(video=torch.randn(b, t, 3, s, s, generator=g), flow=torch.randn(b, t, 2, s // 2, s // 2, generator=g),
                 audio=0.1 * torch.randn(b, n, generator=g), vad=torch.rand(b, n // 160, generator=g) > 0.3,
                 video_present=torch.rand(b, generator=g) > 0.3, audio_present=torch.rand(b, generator=g) > 0.3)


def test_an_exported_fusion_member_scores_batches_of_any_size_like_pytorch(tmp_path):
    # The fusion member reads the batch size for its missing-modality tokens: the member
    # whose graph used to keep the example's 4 windows and refuse every other count.
    torch.manual_seed(0)
    model = create_detector("tiny_fusion", SMALL).eval()
    res = export_member(model, _batch(4), tmp_path / "m.onnx")
    assert res.ok, res.error
    session = ort_session(tmp_path / "m.onnx")
    assert all(isinstance(i.shape[0], str) for i in session.get_inputs())  # a symbol, not a number
    for b in (1, 3, 7):
        batch = _batch(b, seed=b)
        with torch.inference_mode():
            want = model(batch).logits.numpy()
        got = run_session(session, batch)
        assert got.shape == (b,)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


class _PinsBatchSize(nn.Module):
    """A detector whose code turns the batch size into a Python int (a reshape to it)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(SMALL.audio_samples_per_window, 1)

    def forward(self, batch: Batch) -> DetectorOutput:
        assert batch.audio is not None
        b = int(batch.audio.shape[0])
        return DetectorOutput.from_logits(self.head(batch.audio).reshape(b))


def test_a_graph_that_keeps_the_example_batch_size_is_not_kept(tmp_path):
    res = export_member(_PinsBatchSize().eval(), _batch(4), tmp_path / "m.onnx")
    assert not res.ok
    assert "batch size" in (res.error or "")


@pytest.mark.parametrize("size", [1, 7])
def test_resized_batches_cycle_the_example_rows(size):
    from veracity.onnx_export import resized

    example = _batch(4)
    out = resized(example, size)
    assert out.size == size
    rows = [i % 4 for i in range(size)]
    assert torch.equal(out.video, example.video[rows]) and torch.equal(out.audio_present, example.audio_present[rows])
