"""Shared fixtures of the model tests: a small contract and random batches for it."""

from __future__ import annotations

import pytest
import torch

from veracity.config import ContractConfig
from veracity.contract import DataContract
from veracity.models import Batch

# Small windows keep every forward/backward well under a second on 2 CPU cores.
SMALL = ContractConfig(frames_per_window=4, face_size=32).build()


def _make_batch(contract: DataContract = SMALL, b: int = 2, seed: int = 0, **flags: torch.Tensor) -> Batch:
    """A random batch with every modality (flow at half the crop size, as extraction stores it)."""
    g = torch.Generator().manual_seed(seed)
    t, s, n = contract.frames_per_window, contract.face_size, contract.audio_samples_per_window
    return Batch(
        video=torch.randn(b, t, 3, s, s, generator=g),
        flow=torch.randn(b, t, 2, s // 2, s // 2, generator=g),
        audio=0.1 * torch.randn(b, n, generator=g),
        vad=torch.rand(b, n // 160, generator=g) > 0.3,
        video_present=flags.get("video_present", torch.ones(b, dtype=torch.bool)),
        audio_present=flags.get("audio_present", torch.ones(b, dtype=torch.bool)),
        label=torch.tensor([0.0, 1.0] * (b // 2) + [0.0] * (b % 2)),
    )


@pytest.fixture
def contract() -> DataContract:
    """The small data contract (4 frames of 32x32, 0.32 s of audio)."""
    return SMALL


@pytest.fixture
def make_batch():
    """Factory of random batches: ``make_batch(contract=SMALL, b=2, seed=0, **presence_flags)``."""
    return _make_batch


@pytest.fixture
def batch() -> Batch:
    """A random batch of two windows for :data:`SMALL`."""
    return _make_batch()


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """Run each model test with one intra-op thread, then restore the previous setting.

    The test models are tiny: splitting their kernels over threads costs more than it
    saves, and on a busy 2-core machine OpenMP threads waiting for each other made this
    module ~3x slower. Scoped to these tests; nothing else sees the change.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
