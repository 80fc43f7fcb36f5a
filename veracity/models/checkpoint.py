"""A trained member on disk: the file names of its folder and how to rebuild it.

Training writes ``models/<member>/`` with these names; evaluation, calibration, the
ensemble stage and the bundle read them from here and never restate them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from veracity.contract import DataContract
from veracity.models.registry import create_detector

MODEL_WEIGHTS = "model.safetensors"
MODEL_META = "model.json"
LAST_WEIGHTS = "last.safetensors"
LAST_META = "last.json"
PREDICTIONS = "predictions.csv"  # one row per clip (video level)
WINDOW_PREDICTIONS = "predictions_window.csv"
FRAME_PREDICTIONS = "predictions_frame.csv"


def read_meta(directory: Path | str) -> dict[str, Any]:
    """A trained member's ``model.json`` (detector, config, contract, training record)."""
    path = Path(directory) / MODEL_META
    if not path.is_file():
        raise FileNotFoundError(f"no trained member at {Path(directory)}: {MODEL_META} is missing (train it first)")
    return json.loads(path.read_text())


def load_member(directory: Path | str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild a trained member from ``model.json`` + ``model.safetensors``, in eval mode."""
    directory = Path(directory)
    meta = read_meta(directory)
    contract = DataContract.from_dict(meta["contract"])
    model = create_detector(meta["detector"], contract, **meta["detector_config"])
    model.load_state_dict(load_file(directory / MODEL_WEIGHTS))
    return model.to(device).eval()
