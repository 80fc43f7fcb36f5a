"""What every detector takes and returns (DESIGN §3: detector output).

A :class:`Batch` carries whatever modalities a clip window has; a missing modality is
marked per sample (``video_present`` / ``audio_present``) rather than faked with zeros, so
fusion models can take their explicit missing-modality path. Every detector returns a
:class:`DetectorOutput`; calibration and fusion consume nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Batch:
    """A batch of clip windows.

    Attributes:
        video: (B, T, 3, S, S) float face crops, normalised with the contract's mean/std.
        flow: (B, T, 2, S', S') float optical flow between consecutive crops, or None.
        audio: (B, N) float waveform at the contract's sample rate (N = T / fps * rate).
        vad: (B, N // hop) bool voice activity per 10 ms hop, or None.
        video_present: (B,) bool; False where the clip has no usable face track.
        audio_present: (B,) bool; False where the clip has no audio.
        label: (B,) float 0/1 (fake), when known.
        video_label: (B,) float 0/1, NaN when unknown.
        audio_label: (B,) float 0/1, NaN when unknown.
    """

    video: torch.Tensor | None = None
    flow: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    vad: torch.Tensor | None = None
    video_present: torch.Tensor | None = None
    audio_present: torch.Tensor | None = None
    label: torch.Tensor | None = None
    video_label: torch.Tensor | None = None
    audio_label: torch.Tensor | None = None

    @property
    def size(self) -> int:
        """Batch size (a symbol while ``torch.export`` traces a member)."""
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                # shape[0], not int(shape[0]): int() would pin the traced batch size to the
                # example's, and the ONNX exporter then saves a graph that refuses any other.
                return v.shape[0]
        return 0

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Move every tensor to ``device``."""
        return Batch(**{
            f.name: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
            for f in fields(self) for v in [getattr(self, f.name)]
        })


@dataclass
class DetectorOutput:
    """The one result type of every detector.

    Attributes:
        logits: (B,) fake-vs-real logit per window.
        prob: (B,) sigmoid of ``logits``.
        frame_scores: (B, T) per-frame logits where the detector sees frames, else None.
        features: (B, D) pooled features (for fusion, stacking and drift monitoring).
        aux: named extra logits, e.g. ``{"video": ..., "audio": ..., "sync": ...}``, each (B,).
    """

    logits: torch.Tensor
    prob: torch.Tensor
    frame_scores: torch.Tensor | None = None
    features: torch.Tensor | None = None
    aux: dict[str, torch.Tensor] | None = None

    @classmethod
    def from_logits(cls, logits: torch.Tensor, **kw: object) -> DetectorOutput:
        """Build an output from logits (probability derived)."""
        return cls(logits=logits, prob=torch.sigmoid(logits), **kw)  # type: ignore[arg-type]
