"""Detectors: a registry of named variants and a factory, like timm (DESIGN §5.1).

>>> from veracity.models import create_detector, list_detectors
>>> det = create_detector("tiny_video", contract)          # doctest: +SKIP
>>> out = det(batch)                                       # DetectorOutput  # doctest: +SKIP

Importing this package registers the variants of :mod:`.video`, :mod:`.audio`,
:mod:`.lipsync` and :mod:`.fusion`; it imports neither timm nor transformers (they are
imported when a detector that needs them is built).
"""

from veracity.models import audio, fusion, lipsync, video  # noqa: F401  (registers variants)
from veracity.models.base import Batch, DetectorOutput
from veracity.models.registry import (
    Detector,
    create_detector,
    detector_info,
    list_detectors,
    load_detector,
    load_weights,
    register_detector,
    save_detector,
)

__all__ = [
    "Batch",
    "Detector",
    "DetectorOutput",
    "create_detector",
    "detector_info",
    "list_detectors",
    "load_detector",
    "load_weights",
    "register_detector",
    "save_detector",
]
