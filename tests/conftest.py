"""Shared fixtures: a tiny synthetic corpus generated once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from veracity.config import GenerateConfig, SplitRatios
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
