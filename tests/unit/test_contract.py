import dataclasses
from pathlib import Path

import pytest

from veracity.config import ConfigError, ContractConfig, load_params
from veracity.contract import DataContract


def test_contract_round_trips_through_json(tmp_path: Path) -> None:
    c = dataclasses.replace(ContractConfig(fps=10.0, frames_per_window=8, face_size=32).build(),
                            backbones={"video": "resnet18"})
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


def test_contract_defaults_live_only_in_contract_config() -> None:
    # The dataclass states no value of its own: a default added back to it would be a
    # second source that could disagree with ContractConfig (as face_margin once did).
    with pytest.raises(TypeError):
        DataContract()  # type: ignore[call-arg]
    defaulted = [f.name for f in dataclasses.fields(DataContract)
                 if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
    assert defaulted == ["backbones"]  # filled in by training
    c = ContractConfig().build()
    assert {k: getattr(c, k) for k in ContractConfig.model_fields} == ContractConfig().model_dump()
    assert c.backbones == {}


def test_a_contract_missing_a_field_is_refused(tmp_path: Path) -> None:
    d = ContractConfig().build().to_dict()
    del d["face_margin"]
    with pytest.raises(ValueError, match="face_margin"):
        DataContract.from_dict(d)
    del d["backbones"]  # optional: filled in by training
    d["face_margin"] = 0.0
    assert DataContract.from_dict(d).backbones == {}
