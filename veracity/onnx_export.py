"""ONNX export of bundle members, with a parity check against PyTorch.

A member takes a :class:`~veracity.models.base.Batch`; the exported graph takes the
batch's tensors as named inputs (``video``, ``flow``, ``audio``, ``vad``,
``video_present``, ``audio_present``) and returns the window logits, for any number of
windows. A member is kept in ONNX only if ONNX Runtime reproduces its PyTorch logits within
a tolerance on an example batch and on batches of other sizes made from it; otherwise the
bundle records why and the member stays PyTorch-only.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass, fields
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


def resized(batch: Batch, n: int) -> Batch:
    """``batch`` with ``n`` windows: its rows in order, cycled (or cut) to length ``n``."""
    rows = torch.arange(n) % batch.size
    return Batch(**{f.name: (v[rows] if isinstance(v, torch.Tensor) else v)
                    for f in fields(batch) for v in [getattr(batch, f.name)]})


def parity_sizes(b: int) -> tuple[int, ...]:
    """Batch sizes checked besides the example's ``b``: one window (the analyzer's last
    batch of a short clip) and more windows than the example has."""
    return tuple(n for n in (1, b + 3) if n != b)


def fixed_batch_inputs(path: Path) -> list[str]:
    """Inputs of the saved graph whose first dimension is a number rather than a symbol."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    fixed = []
    for i in graph.input:
        dims = i.type.tensor_type.shape.dim
        if dims and not dims[0].dim_param:
            fixed.append(f"{i.name}={dims[0].dim_value}")
    return fixed


def export_member(model: nn.Module, example: Batch, path: Path | str, tolerance: float = 1e-4) -> ExportResult:
    """Export ``model`` to ONNX at ``path`` and check it against PyTorch.

    Parity is checked on ``example`` and on batches of other sizes made from its rows
    (:func:`parity_sizes`): a graph that refuses a batch size, or answers it differently,
    is not kept. ``max_abs_diff`` is the largest difference over all of them. Never raises
    for a model ONNX cannot express: the result says why instead.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    names, tensors = _inputs(example)
    wrapper = _TensorInputs(model, names).eval()
    batches = [example] + [resized(example, n) for n in parity_sizes(example.size)]
    try:
        with torch.inference_mode():
            refs = [wrapper(*_inputs(b)[1]).float().numpy() for b in batches]
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
        fixed = fixed_batch_inputs(path)
        if fixed:
            return ExportResult(False, None, f"the exported graph fixes the batch size ({', '.join(fixed)}): "
                                             "model code made the batch size a constant while tracing")
        session = ort_session(path)
        diffs = {}
        for b, ref in zip(batches, refs, strict=True):
            try:
                got = session.run(["logits"], _feed(names, session, b))[0]
            except Exception as exc:  # noqa: BLE001 - the reason names the batch size ONNX Runtime refused
                return ExportResult(False, None, f"a batch of {b.size} windows is refused: {type(exc).__name__}: "
                                                 f"{str(exc).splitlines()[0][:300]}")
            diffs[b.size] = float(np.max(np.abs(got.astype(np.float64) - ref)))
    except Exception as exc:  # noqa: BLE001 - an unexportable member stays PyTorch-only, with the reason
        log.warning("ONNX export of %s failed: %s", type(model).__name__, exc)
        return ExportResult(False, None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    worst = max(diffs, key=lambda n: diffs[n] if np.isfinite(diffs[n]) else np.inf)
    diff = diffs[worst]
    if not np.isfinite(diff) or diff > tolerance:
        return ExportResult(False, diff, f"parity {diff:.3g} above tolerance {tolerance:g} on a batch of {worst} windows")
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
