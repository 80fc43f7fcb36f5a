from pathlib import Path

import pytest
import yaml

from veracity.config import ConfigError, GenerateConfig, load_params, section, write_resolved


def test_defaults_when_no_params_file(tmp_path: Path) -> None:
    params = load_params(None)
    assert params.generate == GenerateConfig()
    assert params.corpus.source == "synthetic"


def test_precedence_defaults_file_overrides(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"generate": {"n_identities": 12, "fps": 20}}))
    params = load_params(p, ["generate.fps=10"])
    assert params.generate.n_identities == 12  # file beats default
    assert params.generate.fps == 10  # override beats file
    assert params.generate.width == GenerateConfig().width  # default kept


def test_override_without_section_uses_stage_section(tmp_path: Path) -> None:
    params = load_params(None, ["seed=99", "split_ratios.train=0.5", "split_ratios.val=0.3"], "generate")
    assert params.generate.seed == 99
    assert params.generate.split_ratios.val == 0.3


def test_validate_section_overrides() -> None:
    params = load_params(None, ["min_clips=3"], "validate")
    assert section(params, "validate").min_clips == 3


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ({"generate": {"n_identitiez": 3}}, "generate.n_identitiez"),
        ({"extrakt": {"fps": 3}}, "extrakt"),
        ({"extract": {"fps": 3}}, "extract.fps"),
        ({"corpus": {"split_ratios": {"trian": 0.5}}}, "corpus.split_ratios.trian"),
    ],
)
def test_unknown_key_is_named(tmp_path: Path, content: dict, key: str) -> None:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError, match=f"unknown key '{key}'"):
        load_params(p)


def test_bad_values_are_rejected_with_key() -> None:
    with pytest.raises(ConfigError, match="split ratios must sum to 1"):
        load_params(None, ["generate.split_ratios.train=0.9"])
    with pytest.raises(ConfigError, match="'generate.fps'"):
        load_params(None, ["generate.fps=0"])
    with pytest.raises(ConfigError, match="unknown synthetic methods"):
        load_params(None, ["generate.methods=[faceswap, morph]"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_params(None, ["generate.fps"])


def test_missing_explicit_params_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_params(tmp_path / "nope.yaml")


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_params(None, ["generate.seed=5"]).generate
    path = write_resolved(cfg, tmp_path)
    again = GenerateConfig.model_validate(yaml.safe_load(path.read_text()))
    assert again == cfg


def test_repo_params_yaml_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    params = load_params(root / "params.yaml")
    assert params.corpus.root == "data/raw"


def test_ece_bins_are_one_top_level_value() -> None:
    # metrics.ece_bins is the only number of ECE bins: the calibrate section has none of its
    # own any more (train/evaluate once used 15 while calibrate/ensemble used 10).
    root = Path(__file__).resolve().parents[2]
    params = load_params(root / "params.yaml")
    assert params.metrics.ece_bins == 10
    assert load_params(None, ["metrics.ece_bins=15"], section="calibrate").metrics.ece_bins == 15
    assert "n_bins" not in type(params.calibrate).model_fields
    with pytest.raises(ConfigError, match="unknown key 'calibrate.n_bins'"):
        load_params(None, ["calibrate.n_bins=10"])
    with pytest.raises(ConfigError, match="'metrics.ece_bins'"):
        load_params(None, ["metrics.ece_bins=0"])
