"""The FAKE cuts set on new people's reals (veracity.stages.ensemble.fit_on_reals), on a real bundle."""

import numpy as np
import pandas as pd
import pytest

from veracity.bundle import Bundle
from veracity.stages import StageError
from veracity.stages.ensemble import fit_on_reals


def _val(tiny_bundle):
    scores = pd.read_csv(tiny_bundle.parent / "reports" / "calibrate" / "scores.csv")
    return scores[scores["split"] == "val"]


def _reals(n: int, names: list[str], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"video_id": [f"r{i:03d}" for i in range(n)], "verdict": "REAL", "reason": None,
                       **{f"p_{m}": rng.uniform(0.0, 1.0, n) for m in names}})
    return df


def test_every_fake_cut_is_set_on_the_reals_the_bundle_judged(tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    names = bundle.names
    reals = _reals(300, names)
    # Ten clips abstained (out of profile, with probabilities; no face, without): left out.
    reals.loc[:9, "verdict"], reals.loc[:9, "reason"] = "ABSTAIN", "out_of_distribution"
    reals.loc[10:14, "verdict"], reals.loc[10:14, "reason"] = "ABSTAIN", "no_face"
    reals.loc[10:14, [f"p_{n}" for n in names]] = np.nan
    val_cut = bundle.thresholds.fake_at
    report = fit_on_reals(bundle, _val(tiny_bundle), reals)

    judged = reals.iloc[15:]
    assert report["n"] == 300 and report["n_judged"] == 285
    assert report["abstain_reasons"] == {"out_of_distribution": 10, "no_face": 5}
    th = bundle.thresholds
    fused = bundle.fusion.prob(judged[[f"p_{n}" for n in names]].to_numpy())
    assert np.mean(fused >= th.fake_at) == pytest.approx(th.target_fpr, abs=1.5 / 285)
    assert report["rules"]["fused"]["fake_at_val"] == val_cut and report["rules"]["fused"]["fake_at"] == th.fake_at
    # The UNCERTAIN band keeps its share of validation clips below the new cut.
    val = _val(tiny_bundle)
    p_val = bundle.fusion.prob(val[[f"p_{n}" for n in names]].to_numpy())
    band = np.mean((p_val >= th.real_below) & (p_val < th.fake_at))
    assert band == pytest.approx(th.target_uncertain, abs=1.0 / len(val) + 1e-9)
    # Video alone: its members' highest probability, cut at the same target on the same reals.
    video = [m.name for m in bundle.members if m.modality == "video"]
    p_video = judged[[f"p_{n}" for n in video]].max(axis=1).to_numpy()
    cut = bundle.modality_thresholds["video"].fake_at
    assert np.mean(p_video >= cut) == pytest.approx(0.05, abs=1.5 / 285)
    assert report["rules"]["alone.video"]["fake_at"] == cut


def test_no_real_judged_by_every_member_is_a_stage_error(tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    reals = _reals(5, bundle.names)
    reals["verdict"], reals["reason"] = "ABSTAIN", "corrupt"
    with pytest.raises(StageError, match="none of the 5 authentic clips"):
        fit_on_reals(bundle, _val(tiny_bundle), reals)
