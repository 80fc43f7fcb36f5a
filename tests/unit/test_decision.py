"""Fusion rules, three-way thresholds, agreement and gradient surrogates (veracity.decision)."""

import json

import numpy as np
import pytest
import torch

from veracity.calibration import Calibrator, sigmoid
from veracity.decision import (
    Disagreement,
    Fallback,
    Fusion,
    Thresholds,
    agreement,
    calibrate_torch,
    fallback_subsets,
    fit_disagreement,
    fit_fusion,
    fit_stacking,
    fit_thresholds,
)


def test_noisy_or_and_weighted_mean():
    p = np.array([[0.5, 0.5], [0.0, 0.9]])
    nor = Fusion("noisy_or", ("a", "b"))
    np.testing.assert_allclose(nor.raw(p), [0.75, 0.9])
    wm = Fusion("weighted_mean", ("a", "b"), weights=(3.0, 1.0))
    np.testing.assert_allclose(wm.raw(p), [0.5, 0.225])


def test_stacking_learns_to_trust_the_informative_member():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500).astype(float)
    good = sigmoid(3 * (2 * y - 1) + rng.normal(0, 1, 500))
    noise = rng.random(500)
    coef, _ = fit_stacking(np.c_[good, noise], y, l2=1.0)
    assert coef[0] > 0.5 and abs(coef[1]) < 0.2


def test_fit_fusion_rules_and_json_round_trip():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200).astype(float)
    probs = np.c_[sigmoid(2 * (2 * y - 1) + rng.normal(0, 1, 200)), rng.random(200)]
    for rule in ("stacking", "noisy_or", "weighted_mean"):
        f = fit_fusion(probs, y, ["a", "b"], rule, None, l2=1.0, method="auto", folds=5, isotonic_min_clips=1000)
        back = Fusion.from_dict(json.loads(json.dumps(f.to_dict())))
        np.testing.assert_allclose(back.prob(probs), f.prob(probs))
        # The torch path (gradient attacks) computes the same probabilities.
        np.testing.assert_allclose(f.prob_torch(torch.tensor(probs)).numpy(), f.prob(probs), atol=1e-6)


def test_fusion_validates_its_shape():
    with pytest.raises(ValueError, match="one weight per member"):
        Fusion("weighted_mean", ("a", "b"), weights=(1.0,))
    with pytest.raises(ValueError, match="member columns"):
        Fusion("noisy_or", ("a", "b")).raw(np.ones((2, 3)) * 0.5)


def test_isotonic_torch_matches_numpy():
    cal = Calibrator("isotonic", x=(-2.0, 0.0, 1.0, 3.0), y=(0.05, 0.2, 0.6, 0.95))
    z = np.linspace(-4, 4, 41)
    np.testing.assert_allclose(calibrate_torch(cal, torch.tensor(z)).numpy(), cal.prob(z), atol=1e-9)


def test_thresholds_hit_the_fpr_target_exactly_when_it_is_a_whole_count():
    rng = np.random.default_rng(2)
    p_real, p_fake = rng.beta(2, 5, 40), rng.beta(5, 2, 60)
    p = np.r_[p_real, p_fake]
    y = np.r_[np.zeros(40), np.ones(60)]
    th = fit_thresholds(p, y, target_fpr=0.05, target_uncertain=0.10)
    assert th.val["fpr"] == pytest.approx(0.05)  # 2 of 40
    assert th.val["uncertain_rate"] == pytest.approx(0.10)
    assert th.real_below <= th.fake_at
    assert th.verdict(th.fake_at) == "FAKE" and th.verdict(th.real_below - 1e-9) == "REAL"


def test_thresholds_meet_the_fpr_target_on_new_reals_on_average():
    # Reals ~ Uniform(0, 1): a threshold t lets 1 - t of new reals through. Over many
    # validation draws of 40 reals the mean must be the target; the old midpoint cut gave 0.061.
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(40), np.ones(5)]
    fpr = [1.0 - fit_thresholds(np.r_[rng.random(40), np.full(5, 0.999)], y, 0.05, 0.0).fake_at
           for _ in range(4000)]
    assert np.mean(fpr) == pytest.approx(0.05, abs=0.002)
    assert np.std(fpr) == pytest.approx(0.034, abs=0.004)  # the spread the docstring states


def test_thresholds_never_exceed_the_fpr_target():
    y = np.r_[np.zeros(24), np.ones(10)]
    p = np.r_[np.linspace(0, 0.6, 24), np.linspace(0.4, 1, 10)]
    th = fit_thresholds(p, y, 0.05, 0.0)
    assert th.val["fpr"] <= 0.05  # 1/24 is the largest step under 5%
    assert th.real_below == th.fake_at  # no uncertain band asked for


def test_given_reals_the_fake_cut_comes_from_them_and_the_band_from_validation():
    rng = np.random.default_rng(3)
    p = np.r_[rng.uniform(0.0, 0.3, 40), rng.uniform(0.5, 1.0, 60)]
    y = np.r_[np.zeros(40), np.ones(60)]
    reals = rng.uniform(0.0, 0.6, 599)  # other people's reals score higher than validation's
    th = fit_thresholds(p, y, 0.05, 0.10, reals=reals)
    assert th.fake_at > 0.3  # above every validation real: set on the reals
    assert np.mean(reals >= th.fake_at) == pytest.approx(0.05, abs=1 / 599)
    assert np.mean((p >= th.real_below) & (p < th.fake_at)) == pytest.approx(0.10, abs=0.011)
    assert th.fake_at != fit_thresholds(p, y, 0.05, 0.10).fake_at


def test_thresholds_round_trip_and_validate():
    th = Thresholds(0.2, 0.7, 0.05, 0.1, val={"fpr": 0.05})
    assert Thresholds.from_dict(th.to_dict()) == th
    with pytest.raises(ValueError, match="real_below <= fake_at"):
        Thresholds(0.8, 0.3, 0.05, 0.1)


def test_agreement_scores():
    mods = {"v": "video", "a": "audio", "s": "av"}
    a = agreement({"v": 0.9, "a": 0.1, "s": 0.8}, 0.85, mods)
    assert a["model_agreement"] == pytest.approx(2 / 3)
    assert a["modality_agreement"] == pytest.approx(0.2)
    assert a["model_spread"] == pytest.approx(0.8)
    assert agreement({"v": 0.9}, 0.9, {"v": "video"})["modality_agreement"] is None


def _validation_patterns(n_per: int = 40, seed: int = 0) -> np.ndarray:
    """Three members on three kinds of clip: reals (all low), face fakes (face member high,
    voice low) and voice fakes (voice member high, face low): specialists that disagree by design."""
    rng = np.random.default_rng(seed)
    centres = [(-4.0, -4.0, -3.0), (4.0, -4.0, 3.0), (-4.0, 4.0, 3.0)]
    z = np.concatenate([rng.normal(c, 0.6, size=(n_per, 3)) for c in centres])
    return sigmoid(z)


def test_disagreement_bound_is_set_for_its_rate_on_new_in_distribution_clips():
    past, flagged = [], []
    for seed in range(100):  # the guarantee is on average over validation and new draws
        dis = fit_disagreement(_validation_patterns(seed=seed), ("face", "voice", "av"), k=3, rate=0.05)
        fresh = _validation_patterns(n_per=100, seed=1000 + seed)
        past.append(np.mean(dis.distance(fresh) > dis.bound))
        flagged.append(np.mean(dis.flags(fresh)))
    # Split-conformal: new clips from the same distribution exceed the bound at most `rate`
    # of the time (1 - 115/121 = 0.0496 expected here; the mean of 100 draws is within ~0.003).
    assert 0.04 < np.mean(past) <= 0.05 + 0.006
    # Face fakes and voice fakes split the members by design; no more of them are flagged.
    assert np.mean(flagged) <= np.mean(past)


def test_a_split_never_seen_in_validation_is_flagged_and_an_agreeing_outlier_is_not():
    dis = fit_disagreement(_validation_patterns(), ("face", "voice", "av"), k=3, rate=0.02)
    # The real-footage pattern of the issue: face says real, voice unsure-fake, sync sure-fake.
    odd_split = np.array([[0.015, 0.80, 0.985]])
    # Far from every pattern too, but every member says fake: the fusion may decide that.
    odd_agreeing = np.array([[0.999, 0.999, 0.999]])
    assert dis.flags(odd_split).tolist() == [True]
    assert dis.distance(odd_agreeing)[0] > dis.bound and dis.flags(odd_agreeing).tolist() == [False]
    # A clip of a kind validation holds (a face fake) is neither far nor flagged.
    assert dis.flags(sigmoid(np.array([[4.0, -4.0, 3.0]]))).tolist() == [False]


def test_disagreement_round_trips_and_refuses_what_it_cannot_fit():
    dis = fit_disagreement(_validation_patterns(), ("face", "voice", "av"), k=3, rate=0.02)
    again = Disagreement.from_dict(json.loads(json.dumps(dis.to_dict())))
    probe = _validation_patterns(n_per=5, seed=3)
    np.testing.assert_allclose(again.distance(probe), dis.distance(probe))
    with pytest.raises(ValueError, match="at least 4 validation clips"):
        fit_disagreement(_validation_patterns()[:3], ("face", "voice", "av"), k=3, rate=0.02)
    with pytest.raises(ValueError, match="rate"):
        fit_disagreement(_validation_patterns(), ("face", "voice", "av"), k=3, rate=0.6)
    with pytest.raises(ValueError, match="3 member columns"):
        dis.distance(np.array([[0.1, 0.2]]))


def test_fallbacks_cover_every_smaller_set_that_still_sees_the_face():
    mods = {"face": "video", "voice": "audio", "sync": "av", "av": "av"}
    subsets = fallback_subsets(mods)
    # Every proper subset of 2 or 3 members: 4 + 6, none of them audio-only here.
    assert len(subsets) == 10 and len(set(subsets)) == 10
    assert all(1 < len(s) < 4 for s in subsets) and ("face", "voice", "sync") in subsets
    assert all(list(s) == [n for n in mods if n in s] for s in subsets)  # the bundle's member order
    two_voices = fallback_subsets({"face": "video", "voice": "audio", "voice2": "audio"})
    assert ("voice", "voice2") not in two_voices and set(two_voices) == {("face", "voice"), ("face", "voice2")}
    assert fallback_subsets({"face": "video", "voice": "audio"}) == []  # one left: the modality-alone rule


def test_a_fallback_round_trips_with_its_own_fusion_and_thresholds():
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.5).astype(float)
    probs = np.clip(np.c_[0.4 * y + 0.6 * rng.random(200), 0.2 * y + 0.8 * rng.random(200)], 0.01, 0.99)
    fusion = fit_fusion(probs, y, ("face", "sync"), "stacking", None, 1.0, "auto", 5, 50)
    fb = Fallback(fusion, fit_thresholds(fusion.prob(probs), y, 0.05, 0.1))
    again = Fallback.from_dict(json.loads(json.dumps(fb.to_dict())))
    assert again == fb and again.members == ("face", "sync")
    assert again.thresholds.rates(fusion.prob(probs), y)["fpr"] <= 0.05
