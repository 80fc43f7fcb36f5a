"""Where models run: the one place that turns ``auto`` / ``cpu`` / ``cuda`` into a device.

Training (``train.device``), the analyzer and the service (``--device``) and the attack
stage all resolve their device here, so ``auto`` means the same everywhere and asking for
CUDA on a machine without it fails at once, with a message, instead of at the first
tensor moved there.
"""

from __future__ import annotations

import torch


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
