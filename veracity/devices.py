"""Where models run: the one place that turns ``auto`` / ``cpu`` / ``cuda`` into a device,
and an inference precision (``auto`` / ``fp32`` / ``bf16``) into an autocast dtype.

Training (``train.device``), the analyzer and the service (``--device``) and the attack
stage all resolve their device here, so ``auto`` means the same everywhere and asking for
CUDA on a machine without it fails at once, with a message, instead of at the first
tensor moved there.
"""

from __future__ import annotations

from typing import get_args

import torch

from veracity.config import Precision


def resolve_device(name: str | torch.device) -> torch.device:
    """The device a name stands for.

    Args:
        name: ``"auto"`` (CUDA when available, else CPU), or any torch device name or
            :class:`torch.device` (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).

    Returns:
        The device.

    Raises:
        ValueError: a name torch does not know, or CUDA asked for where this torch
            cannot use it (no GPU, a CPU-only build, or an index beyond the GPUs present).
    """
    if isinstance(name, str) and name.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {name!r}: use auto, cpu or cuda[:index] ({exc})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!s} asked for, but CUDA is not available here (no GPU, or "
                             "torch built without CUDA); use auto or cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!s} asked for, but only {count} CUDA device(s) are present")
    return device


PRECISIONS: tuple[str, ...] = get_args(Precision)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype the members' forward passes run under on ``device`` (None: fp32).

    ``auto`` is bf16 on a CUDA device that supports it and fp32 everywhere else: on CPU it
    stays fp32 even where bf16 is faster (``bench/precision_compare.py`` measures both), so
    that a CPU's figures do not depend on whether it has bf16 instructions. ``bf16`` asks
    for it on either device. The member's own code may keep a step in fp32 (the audio
    member's spectra).

    Raises:
        ValueError: an unknown name, or ``bf16`` on a GPU without bf16 support.
    """
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}: use one of {', '.join(PRECISIONS)}")
    if name == "fp32":
        return None
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if name == "auto":
        return torch.bfloat16 if cuda_bf16 else None
    if device.type == "cuda" and not cuda_bf16:
        raise ValueError(f"precision bf16 asked for, but {device} does not support bfloat16; use fp32 or auto")
    return torch.bfloat16


def precision_name(dtype: torch.dtype | None) -> str:
    """``fp32`` or ``bf16``: how a report and the service's health name an autocast dtype."""
    return "fp32" if dtype is None else "bf16"
