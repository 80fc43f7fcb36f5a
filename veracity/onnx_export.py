"""ONNX export of bundle members, with a parity check against PyTorch.

A member takes a :class:`~veracity.models.base.Batch`; the exported graph takes the
batch's tensors as named inputs (``video``, ``flow``, ``audio``, ``vad``,
``video_present``, ``audio_present``) and returns the window logits. A member is kept in
ONNX only if ONNX Runtime reproduces its PyTorch logits within a tolerance on an example
batch; otherwise the bundle records why and the member stays PyTorch-only.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from veracity.models.base import Batch

log = logging.getLogger(__name__)

INPUTS = ("video", "flow", "audio", "vad", "video_present", "audio_present")


@dataclass(frozen=True)
class ExportResult:
    """Outcome of one export: kept when ``ok`` (parity within tolerance)."""

    ok: bool
    max_abs_diff: float | None
    error: str | None = None


class _TensorInputs(nn.Module):
    """A detector seen as a function of plain tensors (what ONNX graphs take)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(Batch(**dict(zip(self.names, tensors, strict=True)))).logits


def _inputs(batch: Batch) -> tuple[tuple[str, ...], tuple[torch.Tensor, ...]]:
    names = tuple(n for n in INPUTS if getattr(batch, n) is not None)
    return names, tuple(getattr(batch, n).cpu() for n in names)


def _feed(names: tuple[str, ...], session: Any, batch: Batch) -> dict[str, np.ndarray]:
    wanted = {i.name for i in session.get_inputs()}
    feed = {}
    for n in names:
        if n in wanted:
            v = getattr(batch, n)
            if v is None:
                raise ValueError(f"the ONNX member needs input {n!r}, which this batch lacks")
            feed[n] = v.detach().cpu().numpy()
    return feed


def export_member(model: nn.Module, example: Batch, path: Path | str, tolerance: float = 1e-4) -> ExportResult:
    """Export ``model`` to ONNX at ``path`` and check it against PyTorch on ``example``.

    Never raises for a model ONNX cannot express: the result says why instead.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    names, tensors = _inputs(example)
    wrapper = _TensorInputs(model, names).eval()
    try:
        with torch.inference_mode():
            ref = wrapper(*tensors).float().numpy()
        # The exporter prints progress and optimiser notes: keep the stage's output readable.
        with (warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()),
              contextlib.redirect_stderr(io.StringIO())):
            warnings.simplefilter("ignore")
            batch_dim = torch.export.Dim("batch", min=1, max=4096)
            prog = torch.onnx.export(wrapper, tensors, input_names=list(names), output_names=["logits"],
                                     dynamic_shapes=(tuple({0: batch_dim} for _ in names),),
                                     opset_version=18, dynamo=True, verbose=False)
            prog.save(str(path))
        _strip_trace_metadata(path)
        session = ort_session(path)
        got = session.run(["logits"], _feed(names, session, example))[0]
        diff = float(np.max(np.abs(got.astype(np.float64) - ref)))
    except Exception as exc:  # noqa: BLE001 - an unexportable member stays PyTorch-only, with the reason
        log.warning("ONNX export of %s failed: %s", type(model).__name__, exc)
        return ExportResult(False, None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    if not np.isfinite(diff) or diff > tolerance:
        return ExportResult(False, diff, f"parity {diff:.3g} above tolerance {tolerance:g}")
    return ExportResult(True, diff)


def _strip_trace_metadata(path: Path) -> None:
    """Drop the per-node stack traces the exporter records: they hold absolute source paths,
    so the same model exported from two checkouts would differ byte for byte."""
    import onnx

    model = onnx.load(str(path))
    graphs = [model.graph, *model.functions]
    for g in graphs:
        for node in g.node:
            del node.metadata_props[:]
    onnx.save(model, str(path))


def ort_session(path: Path | str) -> Any:
    """An ONNX Runtime CPU session for an exported member."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_session(session: Any, batch: Batch) -> np.ndarray:
    """Window logits of an ONNX member for one batch."""
    return session.run(["logits"], _feed(INPUTS, session, batch))[0].astype(np.float32)
