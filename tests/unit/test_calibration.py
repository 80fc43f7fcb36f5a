"""Pooling, temperature, Platt and isotonic calibration (veracity.calibration)."""

import json

import numpy as np
import pytest

from veracity import metrics
from veracity.calibration import (
    PROB_EPS,
    Calibrator,
    Pooling,
    cross_validated_nll,
    fit_calibrator,
    fit_isotonic,
    fit_platt,
    fit_temperature,
    logit,
    platt_targets,
    sigmoid,
    target_mask,
)
from veracity.config import PoolingConfig


def _overconfident(n=400, scale=4.0, seed=0):
    """Labels drawn from sigmoid(z) but reported as scale * z: a model that is too sure."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < sigmoid(z)).astype(float)
    return scale * z, y


def test_pooling_rules_match_metrics_pool():
    s = np.array([0.0, 1.0, 5.0, -2.0])
    assert Pooling("mean", 4, 5.0).one(s) == pytest.approx(1.0)
    assert Pooling("max", 4, 5.0).one(s) == pytest.approx(5.0)
    assert Pooling("topk", k=2, beta=5.0).one(s) == pytest.approx(3.0)
    soft = Pooling("softmax", k=4, beta=5.0).one(s)
    assert Pooling("mean", 4, 5.0).one(s) < soft < 5.0
    with pytest.raises(ValueError, match="pooling must be one of"):
        Pooling("median", 4, 5.0)
    with pytest.raises(ValueError, match="empty"):
        Pooling("mean", 4, 5.0).one([])


def test_pooling_defaults_live_only_in_pooling_config():
    # A default restated on Pooling could disagree with calibrate.pooling's.
    with pytest.raises(TypeError):
        Pooling("topk")  # type: ignore[call-arg]
    cfg = PoolingConfig()
    assert Pooling.from_config(cfg) == Pooling(cfg.how, cfg.k, cfg.beta)
    assert Pooling.from_config(PoolingConfig(how="topk", k=2)).one([0.0, 1.0, 5.0]) == pytest.approx(3.0)


def test_pooling_round_trips_through_json():
    p = Pooling("softmax", k=3, beta=2.5)
    assert Pooling.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    # What bundles written before this change hold (to_dict has always stated k and beta).
    assert Pooling.from_dict({"how": "topk", "k": 4, "beta": 5.0}) == Pooling("topk", 4, 5.0)
    # A hand-written spec naming only the rule takes PoolingConfig's defaults.
    assert Pooling.from_dict({"how": "mean"}) == Pooling.from_config(PoolingConfig())


def test_temperature_scaling_recovers_the_overconfidence_factor():
    z, y = _overconfident(4000, scale=4.0)
    cal = fit_temperature(z, y)
    assert cal.temperature == pytest.approx(4.0, rel=0.15)
    assert metrics.ece(y, cal.prob(z), 10) < metrics.ece(y, sigmoid(z), 10)
    # Temperature keeps the ranking: AUC is unchanged.
    assert metrics.roc_auc(y, cal.prob(z)) == pytest.approx(metrics.roc_auc(y, z))


def test_isotonic_is_monotone_and_stored_as_breakpoints():
    z, y = _overconfident(600)
    cal = fit_isotonic(z, y)
    grid = np.linspace(z.min() - 5, z.max() + 5, 500)
    p = cal.prob(grid)
    assert np.all(np.diff(p) >= 0)
    assert p.min() >= PROB_EPS and p.max() <= 1 - PROB_EPS
    back = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_allclose(back.prob(grid), p)


def test_calibrator_rejects_bad_parameters():
    with pytest.raises(ValueError, match="temperature"):
        Calibrator("temperature", temperature=0.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        Calibrator("isotonic", x=(0.0, 1.0), y=(0.9, 0.1))
    with pytest.raises(ValueError, match="unknown calibration method"):
        Calibrator("beta")
    with pytest.raises(ValueError, match="Platt slope"):
        Calibrator("platt", slope=-1.0)


def test_platt_recovers_slope_and_bias_and_round_trips():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 1.5, 4000)
    y = (rng.random(z.size) < sigmoid(2.0 * z - 1.0)).astype(float)
    cal = fit_platt(z, y)
    assert cal.slope == pytest.approx(2.0, rel=0.15) and cal.bias == pytest.approx(-1.0, abs=0.2)
    back = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_allclose(back.prob(z), cal.prob(z))
    np.testing.assert_allclose(back.log_odds(z), cal.slope * z + cal.bias)


def test_perfectly_separated_validation_keeps_unseen_scores_ranked():
    # A member that separates validation perfectly (as ours often do on ~100 clips). A test
    # fake scored below every validation fake, yet above every real, must stay above the
    # reals after calibration: hard 0/1 targets send T to its bound and both to the clamp.
    rng = np.random.default_rng(3)
    z = np.r_[rng.uniform(-6, -3, 40), rng.uniform(3, 6, 20)]
    y = np.r_[np.zeros(40), np.ones(20)]
    targets = platt_targets(y)
    assert targets.max() == pytest.approx(21 / 22) and targets.min() == pytest.approx(1 / 42)
    for fit in (fit_temperature, fit_platt):
        cal = fit(z, y)
        p_real, p_unseen_fake = cal.prob([-3.0, 1.0])
        assert PROB_EPS < p_real < p_unseen_fake < 1 - PROB_EPS, fit.__name__
        assert cal.prob([6.0])[0] < 0.9999, fit.__name__


def test_fit_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        fit_temperature([0.1, 0.2, 0.3], [1, 1, 1])


def test_auto_picks_the_lowest_cross_validated_nll():
    z, y = _overconfident(300, scale=3.0, seed=1)
    cal, cv = fit_calibrator(z, y, "auto", folds=5, isotonic_min_clips=100)
    assert set(cv) == {"temperature", "platt", "isotonic"}
    assert cal.method == min(cv, key=cv.get)
    assert cv[cal.method] == pytest.approx(cross_validated_nll(z, y, cal.method, 5))


def test_auto_leaves_isotonic_out_below_its_minimum_size():
    z, y = _overconfident(300, scale=3.0, seed=1)
    cal, cv = fit_calibrator(z, y, "auto", folds=5)  # default minimum: 1000 clips
    assert set(cv) == {"temperature", "platt"} and cal.method in cv


def test_auto_falls_back_to_temperature_with_too_few_of_a_class():
    z = np.array([-2.0, -1.0, 0.5, 3.0, 2.0])
    y = np.array([0, 0, 0, 0, 1.0])
    cal, cv = fit_calibrator(z, y, "auto")
    assert cal.method == "temperature" and cv == {}


def test_logit_stays_finite_at_the_edges():
    assert np.all(np.isfinite(logit(np.array([0.0, 1.0, 0.5]))))
    assert sigmoid(np.array([-1000.0, 1000.0])).tolist() == [0.0, 1.0]


def test_target_mask_keeps_reals_and_target_methods():
    m = target_mask(["real", "lipsync", "faceswap"], ("lipsync",))
    assert m.tolist() == [True, True, False]
    assert target_mask(["real", "faceswap"], None).all()
