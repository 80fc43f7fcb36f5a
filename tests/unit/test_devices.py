"""Device resolution (veracity.devices): one meaning of auto / cpu / cuda for every caller."""

from __future__ import annotations

import pytest
import torch

from veracity.config import TrainConfig
from veracity.devices import precision_name, resolve_device, resolve_precision


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_auto_follows_cuda_availability(no_cuda) -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_picks_cuda_when_present(one_gpu) -> None:
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="only 1 CUDA device"):
        resolve_device("cuda:3")


def test_cuda_without_cuda_is_a_clear_error(no_cuda) -> None:
    # Not a crash at the first tensor moved there, minutes into a run.
    for name in ("cuda", torch.device("cuda")):
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device(name)
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")


def test_every_caller_uses_the_one_helper(no_cuda) -> None:
    from veracity import analyzer, training

    assert analyzer.resolve_device is resolve_device
    assert training.pick_device(TrainConfig(device="auto")) == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        training.pick_device(TrainConfig(device="cuda"))


def test_auto_precision_is_bf16_only_on_a_gpu_that_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    # CPU figures (the benchmark, the gate) must not depend on the CPU's instruction set.
    assert resolve_precision("auto", cpu) is None and resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", gpu) is torch.bfloat16
    assert resolve_precision("fp32", gpu) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", gpu) is None
    with pytest.raises(ValueError, match="does not support bfloat16"):
        resolve_precision("bf16", gpu)
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        resolve_precision("half", cpu)
    assert [precision_name(d) for d in (None, torch.bfloat16)] == ["fp32", "bf16"]
