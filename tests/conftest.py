"""Shared fixtures: a tiny synthetic corpus generated once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from veracity.config import ContractConfig, ExtractConfig, GenerateConfig, SplitRatios
from veracity.corpus.synth import generate

for _key, _value in {
    "DO_NOT_TRACK": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "BENTOML_DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
}.items():
    os.environ.setdefault(_key, _value)

# Six identities so every split has two people (face swaps need a donor from the same split).
TINY = GenerateConfig(
    seed=7,
    n_identities=6,
    split_ratios=SplitRatios(train=0.34, val=0.33, test=0.33),
    real_per_identity=1,
    fakes_per_method=1,
    width=96,
    height=96,
    min_duration_s=1.0,
    max_duration_s=1.3,
    workers=2,
)


@pytest.fixture(scope="session")
def tiny_config() -> GenerateConfig:
    """The configuration of :func:`tiny_corpus`."""
    return TINY


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 42-clip corpus (every family, 6 identities) written once per session."""
    out = tmp_path_factory.mktemp("tiny_corpus")
    generate(TINY, out)
    return out


@pytest.fixture(scope="session")
def train_tiny_members():
    """A function: extract a corpus, train tiny members for one epoch, calibrate them.

    ``make(corpus, root, members, contract, extract_cfg)`` writes ``root/features``,
    ``root/models/<member>`` and ``root/models/calibration/calibration.json`` (temperature
    scaling: smooth, so gradient attacks see through it) and returns those three paths.
    """
    from veracity.config import CalibrateConfig, TrainConfig
    from veracity.extract import extract
    from veracity.stages.calibrate import calibrate
    from veracity.training import train

    def make(corpus: Path, root: Path, members: dict, contract, extract_cfg) -> dict[str, Path]:
        features, models = root / "features", root / "models"
        extract(extract_cfg, contract, corpus / "manifest.csv", features)
        for name, member in members.items():
            train(name, member, TrainConfig(), features, models / name, ece_bins=10)
        calibrate(CalibrateConfig(method="temperature"), members, models, models / "calibration",
                  root / "reports" / "calibrate", ece_bins=10)
        return {"features": features, "models": models, "calibration": models / "calibration" / "calibration.json"}

    return make


# The tiny bundle's settings: small windows and crops so one epoch trains in seconds.
TINY_CONTRACT = ContractConfig(fps=12.5, frames_per_window=8, face_size=32).build()
TINY_EXTRACT = ExtractConfig(workers=2, min_duration_s=0.5)
ONE_EPOCH = dict(epochs=1, batch_size=8, windows_per_clip=1, augment=False)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory, train_tiny_members) -> Path:
    """A real bundle built once per session the way the pipeline builds one.

    The tiny corpus is extracted, a tiny video member and a tiny audio member are trained
    for one epoch, ``calibrate`` fits pooling, calibrators, fusion and thresholds, and the
    bundle is saved with ONNX exports and the extraction settings.
    """
    import json

    from veracity.bundle import Bundle, Evidence
    from veracity.config import MemberConfig, to_plain
    from veracity.data import WindowDataset, collate, load_clips

    root = tmp_path_factory.mktemp("tiny_bundle")
    members = {"video": MemberConfig(detector="tiny_video", target="video_label", **ONE_EPOCH),
               "audio": MemberConfig(detector="tiny_audio", target="audio_label", **ONE_EPOCH)}
    paths = train_tiny_members(tiny_corpus, root, members, TINY_CONTRACT, TINY_EXTRACT)
    spec = json.loads(paths["calibration"].read_text())
    bundle = Bundle.assemble(paths["models"], spec, evidence=Evidence(min_face_ratio=0.5, min_duration_s=0.5,
                                                                      require_audio=True))
    ds = WindowDataset(load_clips(paths["features"], ["val"])[:2], TINY_CONTRACT)
    example, _ = collate([ds[i] for i in range(min(4, len(ds)))])
    return bundle.save(root / "bundle", extra={"extract": to_plain(TINY_EXTRACT)}, onnx=True, example=example)
