"""The ensemble stage's bounds (veracity.stages.ensemble): a bundle that is not the model
that was evaluated fails the stage instead of shipping with a number nobody compared."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from veracity.config import EnsembleConfig
from veracity.models.checkpoint import WINDOW_PREDICTIONS
from veracity.stages import BoundError
from veracity.stages.ensemble import _consistency, _enforce_bounds

CFG = EnsembleConfig()  # consistency_tolerance 1e-4, onnx_tolerance 1e-4


def _result(consistency: float = 1e-6, reload: float = 0.0, onnx: float | None = 2e-6) -> dict:
    res = {"members": {"v": {"consistency_max_abs_logit_diff": 1e-7},
                       "a": {"consistency_max_abs_logit_diff": consistency}},
           "reload_max_abs_logit_diff": reload}
    if onnx is not None:
        res["onnx"] = {"v": onnx}
    return res


def test_differences_within_tolerance_pass() -> None:
    _enforce_bounds(_result(), CFG)
    _enforce_bounds(_result(onnx=None), CFG)  # no member exported: nothing to compare


@pytest.mark.parametrize(("kw", "named"), [
    ({"consistency": 3e-3}, "a: bundle vs training window logits differ by 0.003"),
    ({"consistency": math.nan}, "a: bundle vs training"),  # NaN is not "within tolerance"
    ({"reload": 1e-2}, "reloaded from disk differs"),
    ({"onnx": 5e-4}, "v: ONNX vs PyTorch logits differ by 0.0005"),
])
def test_a_difference_past_its_tolerance_fails_the_stage(kw: dict, named: str) -> None:
    with pytest.raises(BoundError, match="not the model that was evaluated") as info:
        _enforce_bounds(_result(**kw), CFG)
    assert named in str(info.value)


def _windows(ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"member": "v", "video_id": ids, "start": 0, "logit": [0.5] * len(ids)})


def _train_predictions(models: Path, ids: list[str], logit: float) -> None:
    (models / "v").mkdir(parents=True)
    pd.DataFrame({"video_id": ids, "start": 0, "split": "test", "logit": logit}).to_csv(
        models / "v" / WINDOW_PREDICTIONS, index=False)


def test_consistency_is_the_largest_window_difference(tmp_path: Path) -> None:
    _train_predictions(tmp_path, ["c1", "c2"], 0.25)
    assert _consistency(_windows(["c1", "c2"]), tmp_path, ["v"]) == {"v": 0.25}


def test_an_empty_merge_is_an_error_not_nan(tmp_path: Path) -> None:
    _train_predictions(tmp_path, ["other1", "other2"], 0.5)
    with pytest.raises(BoundError, match="none of the bundle's test windows"):
        _consistency(_windows(["c1", "c2"]), tmp_path, ["v"])


def test_synthetic_reals_of_the_training_people_are_refused(tmp_path: Path) -> None:
    from veracity.config import GenerateConfig, RealsConfig
    from veracity.stages import StageError
    from veracity.stages.ensemble import reals_clips

    with pytest.raises(StageError, match="equals generate.seed"):
        reals_clips(RealsConfig(seed=5), GenerateConfig(seed=5), tmp_path / "reals")
    assert not (tmp_path / "reals").exists()


def test_a_reals_folder_without_video_is_refused_and_one_with_videos_lists_them(tmp_path: Path) -> None:
    from veracity.config import GenerateConfig, RealsConfig
    from veracity.stages import StageError
    from veracity.stages.ensemble import reals_clips

    (tmp_path / "notes.txt").write_text("not a video")
    cfg = RealsConfig(source="folder", folder=str(tmp_path))
    with pytest.raises(StageError, match="holds no video"):
        reals_clips(cfg, GenerateConfig(), tmp_path / "work")
    (tmp_path / "cam").mkdir()
    (tmp_path / "cam" / "a.MP4").write_bytes(b"x")
    assert reals_clips(cfg, GenerateConfig(), tmp_path / "work") == [("cam/a.MP4", tmp_path / "cam" / "a.MP4")]


def test_the_synthetic_reals_are_many_people_with_a_clip_each_and_no_fakes() -> None:
    from veracity.config import GenerateConfig, RealsConfig
    from veracity.corpus.synth.generate import plan_corpus

    gen = GenerateConfig(seed=1, n_identities=40, real_per_identity=2, methods_per_identity=3)
    specs, _, _ = plan_corpus(RealsConfig(seed=7, n_identities=12, per_identity=1).corpus(gen))
    assert len(specs) == 12 and {s.method for s in specs} == {"real"}
    assert len({s.identity.name for s in specs}) == 12
    specs, _, _ = plan_corpus(RealsConfig(seed=7, n_identities=12, per_identity=2).corpus(gen))
    assert len(specs) == 24 and len({s.identity.name for s in specs}) == 12
