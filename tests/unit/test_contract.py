from pathlib import Path

import pytest

from veracity.config import ConfigError, load_params
from veracity.contract import DataContract


def test_contract_round_trips_through_json(tmp_path: Path) -> None:
    c = DataContract(fps=10.0, frames_per_window=8, face_size=32, backbones={"video": "resnet18"})
    c.save(tmp_path)
    again = DataContract.load(tmp_path)
    assert again == c
    assert again.window_seconds == pytest.approx(0.8)
    assert again.audio_samples_per_window == 12800


def test_contract_comes_from_params() -> None:
    c = load_params(None, ["contract.face_size=96"]).contract.build()
    assert c.face_size == 96 and c.sample_rate == 16000
    with pytest.raises(ConfigError, match="unknown key 'contract.face_sz'"):
        load_params(None, ["contract.face_sz=96"])
