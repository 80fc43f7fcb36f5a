"""The data contract: what a model expects of its inputs (DESIGN §3).

One frozen record of sampling rate, window length, face size and normalisation,
sample rate and audio window, and backbone ids. Extraction writes it next to the
features; training, the service and the monitoring reference read it from there (or
from a model bundle) and never restate its values.

This module owns the record's shape and its JSON form, not its values: the dataclass
has no defaults (only ``backbones``, filled in by training). The default values live
once, in :class:`veracity.config.ContractConfig` (the ``contract`` section of
``params.yaml``); build a default contract with ``ContractConfig().build()``.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

CONTRACT_NAME = "contract.json"


@dataclass(frozen=True)
class DataContract:
    """Input format shared by extraction, training, serving and monitoring.

    Attributes:
        fps: frames sampled per second of video (by true timestamps).
        frames_per_window: frames in one model window.
        face_size: side of the square face crop, pixels.
        face_margin: extra context around the detected box, fraction of its side.
        mean: per-channel RGB mean for normalisation (0-1 scale).
        std: per-channel RGB std for normalisation (0-1 scale).
        sample_rate: audio sample rate, Hz (mono).
        backbones: backbone ids by modality, filled in by training (empty for features).
    """

    # No defaults here: they are ContractConfig's (veracity.config), the one place.
    fps: float
    frames_per_window: int
    face_size: int
    face_margin: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    sample_rate: int
    backbones: dict[str, str] = field(default_factory=dict)

    @property
    def window_seconds(self) -> float:
        """Seconds of video (and audio) in one window."""
        return self.frames_per_window / self.fps

    @property
    def audio_samples_per_window(self) -> int:
        """Audio samples that go with one window of frames."""
        return int(round(self.window_seconds * self.sample_rate))

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form, including the derived audio window."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["audio_seconds_per_window"] = self.window_seconds
        return d

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> DataContract:
        """Inverse of :meth:`to_dict` (derived keys are ignored).

        Raises:
            ValueError: a field other than ``backbones`` is missing (a contract is never
                completed with defaults: that would describe inputs the model never saw).
        """
        keys = {f for f in cls.__dataclass_fields__}
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"data contract lacks {missing}; a contract must state every field")
        kw = {k: v for k, v in data.items() if k in keys}
        for k in ("mean", "std"):
            if k in kw:
                kw[k] = tuple(kw[k])  # type: ignore[arg-type]
        return cls(**kw)  # type: ignore[arg-type]

    def save(self, directory: Path | str) -> Path:
        """Write ``contract.json`` into ``directory``."""
        path = Path(directory) / CONTRACT_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, directory_or_file: Path | str) -> DataContract:
        """Read a contract from a directory holding ``contract.json`` or from the file."""
        path = Path(directory_or_file)
        if path.is_dir():
            path = path / CONTRACT_NAME
        return cls.from_dict(json.loads(path.read_text()))
