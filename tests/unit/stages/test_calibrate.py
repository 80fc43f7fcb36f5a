"""The calibrate stage's thresholds for one modality alone and its fallbacks for fewer members
(veracity.stages.calibrate: modality_thresholds, fit_fallbacks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from veracity.config import CalibrateConfig
from veracity.decision import fit_fusion, fit_thresholds, modality_scores
from veracity.stages import StageError
from veracity.stages.calibrate import fit_fallbacks, modality_thresholds


def _member(p: np.ndarray, y: np.ndarray, keep: np.ndarray, split: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"video_id": [f"v{i:03d}" for i in range(len(p))], "split": split, "p": p, "y": y,
                         "keep": keep})


def test_the_modality_score_is_its_highest_member_judged_on_that_members_target() -> None:
    rng = np.random.default_rng(0)
    n = 120
    split = np.where(np.arange(n) < 80, "val", "test")
    y_a = (rng.random(n) < 0.5).astype(float)
    y_b = np.where(rng.random(n) < 0.2, np.nan, (rng.random(n) < 0.5).astype(float))
    p_a = np.clip(0.3 * y_a + 0.7 * rng.random(n), 0.001, 0.999)
    p_b = np.clip(0.3 * np.nan_to_num(y_b) + 0.7 * rng.random(n), 0.001, 0.999)
    keep_b = rng.random(n) < 0.8
    alone = {"a": _member(p_a, y_a, np.ones(n, bool), split), "b": _member(p_b, y_b, keep_b, split),
             "voice": _member(rng.random(n), y_a, np.ones(n, bool), split)}
    mods = {"a": "video", "b": "video", "voice": "audio"}
    th, report = modality_thresholds(alone, mods, 0.05, 0.1)
    assert set(th) == {"video", "audio"} and report["video"]["members"] == ["a", "b"]

    # The same thing by hand, one clip at a time, with decision.modality_scores.
    ps, ys, ks = [], [], []
    for i in range(n):
        p = modality_scores({"a": p_a[i], "b": p_b[i]}, {"a": "video", "b": "video"})["video"]
        best = "a" if p_a[i] >= p_b[i] else "b"
        y = y_a[i] if best == "a" else y_b[i]
        ps.append(p)
        ys.append(y)
        ks.append(not np.isnan(y) and (best == "a" or keep_b[i]))
    ps, ys, ks = np.array(ps), np.array(ys), np.array(ks)
    val = ks & (split == "val")
    want = fit_thresholds(ps[val], ys[val], 0.05, 0.1)
    assert th["video"] == want
    assert report["video"]["val"] == want.rates(ps[val], ys[val])
    assert report["video"]["test"]["n"] == int((ks & (split == "test")).sum())
    assert report["video"]["thresholds"]["val_fpr"] == report["video"]["val"]["fpr"]


def test_a_modality_that_cannot_be_fitted() -> None:
    n = 20
    split = np.array(["val"] * n)
    only_real = _member(np.linspace(0.1, 0.9, n), np.zeros(n), np.ones(n, bool), split)
    ok = _member(np.linspace(0.1, 0.9, n), (np.arange(n) % 2).astype(float), np.ones(n, bool), split)
    th, report = modality_thresholds({"v": ok, "s": only_real}, {"v": "video", "s": "audio"}, 0.05, 0.1)
    assert set(th) == {"video"} and report["audio"]["thresholds"] is None and "audio-only" in report["audio"]["error"]
    with pytest.raises(StageError, match="video-only thresholds"):
        modality_thresholds({"v": only_real}, {"v": "video"}, 0.05, 0.1)


def test_each_fallback_is_fitted_on_validation_like_the_full_fusion() -> None:
    rng = np.random.default_rng(1)
    n = 240
    y = (rng.random(n) < 0.5).astype(float)
    split = np.where(np.arange(n) < 160, "val", "test")
    table = pd.DataFrame({"label": y, "split": split,
                          **{f"p_{m}": np.clip(w * y + (1 - w) * rng.random(n), 0.01, 0.99)
                             for m, w in (("face", 0.5), ("voice", 0.3), ("sync", 0.2))}})
    cfg = CalibrateConfig()
    is_val = split == "val"
    fallbacks = fit_fallbacks(table, {"face": "video", "voice": "audio", "sync": "av"}, cfg, is_val)
    assert [f.members for f in fallbacks] == [("face", "voice"), ("face", "sync"), ("voice", "sync")]
    fb = fallbacks[0]
    cols = table.loc[is_val, ["p_face", "p_voice"]].to_numpy()
    want = fit_fusion(cols, y[is_val], ("face", "voice"), cfg.fusion.rule, cfg.fusion.weights, cfg.fusion.stacking_l2,
                      cfg.method, cfg.folds, cfg.isotonic_min_clips)
    assert fb.fusion == want
    assert fb.thresholds == fit_thresholds(want.prob(cols), y[is_val], cfg.thresholds.target_fpr,
                                           cfg.thresholds.target_uncertain)
    # Nothing of the test rows went into it.
    table.loc[~is_val, "p_face"] = 0.5
    assert fit_fallbacks(table, {"face": "video", "voice": "audio", "sync": "av"}, cfg, is_val)[0] == fb
