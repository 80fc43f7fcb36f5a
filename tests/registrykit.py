"""Hand-made benchmark figures for registering bundles in tests (register stage, service)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def iv(value: float, half: float = 0.002) -> dict[str, float]:
    """An interval ``value +/- half``."""
    return {"value": value, "lo": value - half, "hi": value + half}


def make_benchmark(bundle: Path | None, auc: float = 0.995, ece: float = 0.02, fpr: float = 0.05,
                   drop: float = 0.01, method_auc: float = 0.99, half: float = 0.002) -> dict:
    """The benchmark's metrics.json for ``bundle``, every figure ``value +/- half``."""
    sha = hashlib.sha256((bundle / "bundle.json").read_bytes()).hexdigest() if bundle else None
    return {"ensemble": {"auc": iv(auc, half), "ap": iv(0.99, half), "ece": iv(ece, half), "fpr": iv(fpr, half),
                         "tpr": iv(0.9, half)},
            "members": {"video_specialist": {"auc": iv(0.9)}},
            "per_method": {"faceswap": {"ensemble": iv(method_auc, half), "video_specialist": iv(0.9)},
                           "lipsync": {"ensemble": iv(0.999, half), "video_specialist": iv(0.6)}},
            "reencode": {"crf": 35, "n": 64, "drop": iv(drop, half)},
            "thresholds": {"real_below": 0.2, "fake_at": 0.7, "target_fpr": 0.05},
            "n": 1000, "n_real": 250, "n_people": 125, "confidence": 0.95, "bundle_sha256": sha}
