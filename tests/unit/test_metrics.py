"""veracity.metrics against scikit-learn (the reference) and brute-force loops."""

from __future__ import annotations

import functools
import inspect
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from veracity import metrics as vm


@pytest.fixture(autouse=True)
def _fast_sklearn():
    """sklearn's argument validation dominates these small calls; it is only the reference."""
    with sklearn.config_context(skip_parameter_validation=True):
        yield


SEEDS = range(3)
# continuous: no ties; ties: scores rounded to one decimal (many tied blocks, some
# mixing both classes); imbalanced: ~5 % fakes; tiny: n = 2 (one of each class);
# tiny_tied: n = 2 with equal scores; logits: unbounded scores.
KINDS = ("continuous", "ties", "imbalanced", "tiny", "tiny_tied", "logits")


def _data(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels with both classes present and probability-like (or logit) scores."""
    rng = np.random.default_rng(seed)
    if kind in ("tiny", "tiny_tied"):
        y = rng.permutation([0, 1])
        s = np.full(2, 0.5) if kind == "tiny_tied" else rng.random(2)
        return y, s
    n = {"continuous": 200, "ties": 300, "imbalanced": 400, "logits": 150}[kind]
    rate = 0.05 if kind == "imbalanced" else 0.4
    y = (rng.random(n) < rate).astype(int)
    y[:2] = [0, 1]  # both classes, whatever the draw
    logit = rng.normal(size=n) + 1.2 * y
    if kind == "logits":
        return y, 3.0 * logit
    p = 1.0 / (1.0 + np.exp(-logit))
    if kind == "ties":
        p = np.round(p, 1)
    return y, p


CASES = [pytest.param(kind, seed, id=f"{kind}-{seed}") for kind in KINDS for seed in SEEDS]


# --------------------------------------------------------------------------- ranking


@pytest.mark.parametrize(("kind", "seed"), CASES)
def test_roc_auc_matches_sklearn(kind, seed):
    y, s = _data(kind, seed)
    assert vm.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-10)


def test_roc_auc_counts_ties_as_one_half():
    # Pairs (fake, real): (0.5, 0.5) tie -> 0.5, (0.5, 0.1) win -> 1, (0.9, *) wins -> 2.
    assert vm.roc_auc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(3.5 / 4)
    assert vm.roc_auc([0, 1], [0.3, 0.3]) == 0.5


@pytest.mark.parametrize(("kind", "seed"), CASES)
def test_roc_curve_equals_sklearn_without_dropped_points(kind, seed):
    y, s = _data(kind, seed)
    fpr, tpr, thr = vm.roc_curve(y, s)
    ref_fpr, ref_tpr, ref_thr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_array_equal(thr, ref_thr)
    np.testing.assert_allclose(fpr, ref_fpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tpr, ref_tpr, rtol=0, atol=1e-12)
    # The curve's trapezoidal area is the AUC.
    assert np.trapezoid(tpr, fpr) == pytest.approx(vm.roc_auc(y, s), abs=1e-10)


@pytest.mark.parametrize(("kind", "seed"), CASES)
def test_average_precision_and_pr_curve_match_sklearn(kind, seed):
    y, s = _data(kind, seed)
    assert vm.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-10)
    prec, rec, thr = vm.pr_curve(y, s)
    ref_prec, ref_rec, ref_thr = skm.precision_recall_curve(y, s)
    np.testing.assert_array_equal(thr, ref_thr)
    np.testing.assert_allclose(prec, ref_prec, rtol=0, atol=1e-12)
    np.testing.assert_allclose(rec, ref_rec, rtol=0, atol=1e-12)


def test_average_precision_is_step_wise_not_trapezoid():
    y, s = [1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]
    # Hand computation: recall steps of 1/2 at precision 1 and 2/3.
    assert vm.average_precision(y, s) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def _brute_eer(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Where the ROC polyline meets the line FPR = FNR (x + y = 1), segment by segment."""
    for j in range(len(fpr) - 1):
        x0, y0, x1, y1 = fpr[j], tpr[j], fpr[j + 1], tpr[j + 1]
        g0, g1 = x0 + y0 - 1.0, x1 + y1 - 1.0  # signed offsets from the line
        if g0 == 0.0:
            return float(x0)
        if g0 < 0.0 <= g1:
            t = g0 / (g0 - g1)
            return float(x0 + t * (x1 - x0))
    raise AssertionError("ROC never crosses FPR = FNR")


@pytest.mark.parametrize(("kind", "seed"), CASES)
def test_eer_matches_brute_force_crossing(kind, seed):
    y, s = _data(kind, seed)
    rate, threshold = vm.eer(y, s)
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    assert rate == pytest.approx(_brute_eer(fpr, tpr), abs=1e-12)
    # The interpolated crossing can never be worse than the best actual threshold.
    assert rate <= np.min(np.maximum(fpr, 1.0 - tpr)) + 1e-12
    # The threshold lies within the scores' range.
    assert s.min() <= threshold <= s.max()


def test_eer_hand_examples():
    assert vm.eer([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == (0.0, 0.8)  # separable
    assert vm.eer([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9])[0] == 1.0  # reversed
    # One real above both fakes: ROC (0,0) (0.5,0) (0.5,0.5) (0.5,1) (1,1); the point
    # at threshold 0.8 lies on FPR = FNR = 0.5, so it is used as is.
    assert vm.eer([0, 1, 1, 0], [0.9, 0.8, 0.7, 0.1]) == (0.5, 0.8)
    # Crossing strictly inside a segment: ROC (0,0) (0,0.5) (1,1) at thresholds inf,
    # 0.9, 0.5 (a fake tied with the real); FPR = 1 - TPR one third along the last one.
    rate, thr = vm.eer([1, 1, 0], [0.9, 0.5, 0.5])
    assert rate == pytest.approx(1 / 3)
    assert thr == pytest.approx(0.9 + (1 / 3) * (0.5 - 0.9))


def test_eer_near_one_half_for_uninformative_scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 20_000)
    s = 0.5 + 0.01 * rng.standard_normal(20_000)
    rate, threshold = vm.eer(y, s)
    assert rate == pytest.approx(0.5, abs=0.02)
    assert threshold == pytest.approx(0.5, abs=0.002)


def _brute_fpr_at_tpr(y: np.ndarray, s: np.ndarray, target: float) -> float:
    best = math.inf
    for t in [math.inf, *np.unique(s)]:
        pred = s >= t
        tpr = pred[y == 1].mean()
        fpr = pred[y == 0].mean()
        if tpr >= target:
            best = min(best, fpr)
    return float(best)


@pytest.mark.parametrize(("kind", "seed"), CASES)
def test_fpr_at_tpr_matches_threshold_loop(kind, seed):
    y, s = _data(kind, seed)
    for target in (0.0, 0.5, 0.9, 0.95, 1.0):
        assert vm.fpr_at_tpr(y, s, target) == pytest.approx(
            _brute_fpr_at_tpr(y, s, target), abs=1e-12
        )


def test_fpr_at_tpr_rejects_bad_target():
    with pytest.raises(ValueError, match="tpr"):
        vm.fpr_at_tpr([0, 1], [0.1, 0.9], tpr=1.5)


# --------------------------------------------------------------------------- threshold


@pytest.mark.parametrize(("kind", "seed"), CASES)
def test_threshold_metrics_match_sklearn(kind, seed):
    y, s = _data(kind, seed)
    # Thresholds -1 and 2 make every prediction one class: the zero-division paths.
    for threshold in (-1.0, 0.3, 0.5, 0.7, 2.0):
        got = vm.threshold_metrics(y, s, threshold)
        pred = (s >= threshold).astype(int)
        (tn, fp), (fn, tp) = skm.confusion_matrix(y, pred, labels=[0, 1])
        assert (got["tn"], got["fp"], got["fn"], got["tp"]) == (tn, fp, fn, tp)
        assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-10)
        # Per-class scores: index 0 is "real as positive" (specificity), 1 is fake.
        prec, rec, f1, _ = skm.precision_recall_fscore_support(
            y, pred, labels=[0, 1], average=None, zero_division=0
        )
        assert got["precision"] == pytest.approx(prec[1], abs=1e-10)
        assert got["recall"] == pytest.approx(rec[1], abs=1e-10)
        assert got["f1"] == pytest.approx(f1[1], abs=1e-10)
        assert got["specificity"] == pytest.approx(rec[0], abs=1e-10)
        assert got["fpr"] == pytest.approx(1.0 - rec[0], abs=1e-10)


def test_threshold_metrics_zero_division_is_zero():
    got = vm.threshold_metrics([1, 1], [0.1, 0.2], 0.5)  # no negatives, nothing flagged
    assert got["precision"] == got["specificity"] == got["fpr"] == got["f1"] == 0.0
    assert got["recall"] == 0.0 and got["accuracy"] == 0.0 and got["fn"] == 2


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("single", [None, 0, 1])
def test_confusion_matches_sklearn(seed, single):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 50) if single is None else np.full(50, single)
    pred = rng.integers(0, 2, 50).astype(bool)
    got = vm.confusion(y, pred)
    assert got.shape == (2, 2)
    np.testing.assert_array_equal(got, skm.confusion_matrix(y, pred, labels=[0, 1]))


# --------------------------------------------------------------------------- calibration


@pytest.mark.parametrize(("kind", "seed"), [c for c in CASES if c.values[0] != "logits"])
def test_brier_matches_sklearn(kind, seed):
    y, p = _data(kind, seed)
    assert vm.brier(y, p) == pytest.approx(skm.brier_score_loss(y, p), abs=1e-10)


def test_ece_small_for_calibrated_and_large_for_overconfident():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    y = (rng.random(p.size) < p).astype(int)  # y ~ Bernoulli(p): calibrated by design
    assert vm.ece(y, p, 10) < 0.02
    assert vm.ece(y, p, 10, strategy="quantile") < 0.02
    logit = np.log(p / (1 - p))
    overconfident = 1.0 / (1.0 + np.exp(-4.0 * logit))
    assert vm.ece(y, overconfident, 10) > 0.1
    assert vm.brier(y, overconfident) > vm.brier(y, p)


def test_ece_if_calibrated_is_the_sampling_floor_of_a_perfect_model():
    # Certain predictions: a perfect model's labels equal them, so its ECE is exactly 0.
    assert vm.ece_if_calibrated(np.r_[np.zeros(50), np.ones(50)], 10) == {"median": 0.0, "p90": 0.0}
    # 100 clips at p = 0.5: ECE = |k/100 - 0.5| with k ~ Binomial(100, 0.5); its median is
    # 0.03 (P(|k - 50| <= 2) = 0.383, <= 3: 0.516), far from the 0 of an infinite sample.
    half = vm.ece_if_calibrated(np.full(100, 0.5), 10, draws=4000)
    assert half["median"] == pytest.approx(0.03, abs=0.005)
    assert half["p90"] == pytest.approx(0.08, abs=0.005)  # P(|k - 50| <= 7) = 0.867, <= 8: 0.911
    # The floor shrinks like 1/sqrt(n), and the seed makes it reproducible.
    p = np.random.default_rng(1).random(100)
    small, large = vm.ece_if_calibrated(p, 10), vm.ece_if_calibrated(np.tile(p, 16), 10)
    assert large["median"] < 0.4 * small["median"]
    assert vm.ece_if_calibrated(p, 10) == small
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        vm.ece_if_calibrated([0.2, 1.5], 10)


def _brute_ece(y, p, edges) -> float:
    """Bin b holds edges[b] < p <= edges[b+1]; the first bin is open below, the last above."""
    n_bins = len(edges) - 1
    total = 0.0
    for b in range(n_bins):
        members = [
            i
            for i in range(len(p))
            if (b == 0 or p[i] > edges[b]) and (b == n_bins - 1 or p[i] <= edges[b + 1])
        ]
        if members:
            acc = sum(y[i] for i in members) / len(members)
            conf = sum(p[i] for i in members) / len(members)
            total += len(members) * abs(acc - conf)
    return total / len(p)


@pytest.mark.parametrize(("kind", "seed"), [c for c in CASES if c.values[0] != "logits"])
@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_ece_and_reliability_against_loops_and_sklearn(kind, seed, strategy):
    y, p = _data(kind, seed)
    for n_bins in (1, 5, 15):
        rel = vm.reliability(y, p, n_bins=n_bins, strategy=strategy)
        assert rel["count"].sum() == len(y)
        assert len(rel["count"]) == len(rel["mean_pred"]) == len(rel["edges"]) - 1 == n_bins
        got = vm.ece(y, p, n_bins=n_bins, strategy=strategy)
        assert got == pytest.approx(_brute_ece(y, p, rel["edges"]), abs=1e-12)
        filled = rel["count"] > 0
        gaps = np.abs(rel["frac_pos"] - rel["mean_pred"])[filled]
        assert got == pytest.approx(np.sum(rel["count"][filled] * gaps) / len(y), abs=1e-15)
        # The non-empty bins are exactly sklearn's calibration_curve bins.
        prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy=strategy)
        np.testing.assert_allclose(rel["frac_pos"][filled], prob_true, atol=1e-12)
        np.testing.assert_allclose(rel["mean_pred"][filled], prob_pred, atol=1e-12)
        assert np.isnan(rel["mean_pred"][~filled]).all()


def test_calibration_rejects_non_probabilities():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        vm.ece([0, 1], [-0.5, 2.0], 10)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        vm.brier([0, 1], [0.1, 1.5])
    with pytest.raises(ValueError, match="strategy"):
        vm.ece([0, 1], [0.1, 0.9], 10, strategy="kde")
    with pytest.raises(ValueError, match="n_bins"):
        vm.ece([0, 1], [0.1, 0.9], n_bins=0)


# --------------------------------------------------------------------------- degenerate


RANK_FNS = [
    lambda y, s: vm.roc_auc(y, s),
    lambda y, s: vm.average_precision(y, s),
    lambda y, s: vm.eer(y, s)[0],
    lambda y, s: vm.eer(y, s)[1],
    lambda y, s: vm.fpr_at_tpr(y, s),
]


@pytest.mark.parametrize("label", [0, 1])
def test_single_class_gives_nan_without_warnings(label):
    y, s = np.full(10, label), np.linspace(0.0, 1.0, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fn in RANK_FNS:
            assert math.isnan(fn(y, s))
        fpr, tpr, _ = vm.roc_curve(y, s)
        assert np.isnan(tpr if label == 0 else fpr).all()
        assert not np.isnan(fpr if label == 0 else tpr).any()
        summary = vm.summarize(y, s, n_bins=10)
        # Label-free and zero-division metrics stay defined.
        assert summary["n"] == 10 and summary[("n_neg", "n_pos")[label]] == 10
        assert not math.isnan(summary["accuracy"]) and not math.isnan(summary["brier"])
        assert math.isnan(summary["auc"]) and math.isnan(summary["eer"])


def test_empty_input_gives_nan_without_warnings():
    e = np.array([])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fn in RANK_FNS:
            assert math.isnan(fn(e, e))
        assert math.isnan(vm.brier(e, e)) and math.isnan(vm.ece(e, e, 10))
        assert math.isnan(vm.ece(e, e, 10, strategy="quantile"))
        tm = vm.threshold_metrics(e, e)
        assert math.isnan(tm["accuracy"]) and tm["tp"] == 0
        summary = vm.summarize(e, e, n_bins=10)
        assert summary["n"] == 0
        assert all(math.isnan(v) for k, v in summary.items() if not k.startswith("n"))
        groups, pooled = vm.pool(e, e, "mean")
        assert groups.size == pooled.size == 0


ALL_SCORED = [
    vm.roc_auc,
    vm.roc_curve,
    vm.average_precision,
    vm.pr_curve,
    vm.eer,
    vm.fpr_at_tpr,
    vm.threshold_metrics,
    vm.brier,
    functools.partial(vm.ece, n_bins=10),
    functools.partial(vm.reliability, n_bins=10),
    functools.partial(vm.summarize, n_bins=10),
]


@pytest.mark.parametrize("fn", ALL_SCORED, ids=lambda f: getattr(f, "func", f).__name__)
def test_nan_scores_and_bad_labels_raise(fn):
    with pytest.raises(ValueError, match="NaN"):
        fn([0, 1, 1], [0.1, np.nan, 0.7])
    with pytest.raises(ValueError, match="0 \\(real\\) and 1 \\(fake\\)"):
        fn([0, 2, 1], [0.1, 0.5, 0.7])
    with pytest.raises(ValueError, match="length"):
        fn([0, 1], [0.1, 0.5, 0.7])


def test_pool_rejects_nan_and_unknown_rule():
    with pytest.raises(ValueError, match="NaN"):
        vm.pool([0.1, np.nan], [0, 0], "mean")
    with pytest.raises(ValueError, match="how"):
        vm.pool([0.1], [0], how="median")
    with pytest.raises(ValueError, match="beta"):
        vm.pool([0.1], [0], how="softmax", beta=0.0)


# --------------------------------------------------------------------------- summarize


def test_summarize_agrees_with_parts():
    y, s = _data("ties", 1)
    summary = vm.summarize(y, s, threshold=0.4, n_bins=10)
    assert summary["auc"] == vm.roc_auc(y, s)
    assert (summary["eer"], summary["eer_threshold"]) == vm.eer(y, s)
    assert summary["fpr_at_95tpr"] == vm.fpr_at_tpr(y, s, 0.95)
    assert summary["f1"] == vm.threshold_metrics(y, s, 0.4)["f1"]
    assert summary["ece"] == vm.ece(y, s, 10)
    assert (summary["n"], summary["n_pos"]) == (len(y), int(y.sum()))
    assert all(isinstance(v, int | float) for v in summary.values())

    logits = vm.summarize(y, 10 * s - 5, threshold=0.0, is_prob=False)
    assert "brier" not in logits and "ece" not in logits
    assert logits["auc"] == summary["auc"]  # ranking metrics ignore monotone rescaling
    with pytest.raises(ValueError, match="is_prob=False"):
        vm.summarize(y, 10 * s - 5, n_bins=10)


# --------------------------------------------------------------------------- pooling


def _loop_pool(scores, groups, how, k, beta):
    out = {}
    for g in sorted(set(groups.tolist())):
        v = [float(x) for x, gg in zip(scores, groups, strict=True) if gg == g]
        if how == "mean":
            out[g] = sum(v) / len(v)
        elif how == "max":
            out[g] = max(v)
        elif how == "topk":
            top = sorted(v, reverse=True)[:k]
            out[g] = sum(top) / len(top)
        else:
            out[g] = math.log(sum(math.exp(beta * x) for x in v) / len(v)) / beta
    return np.array(list(out)), np.array(list(out.values()))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("how", vm.POOL_RULES)
@pytest.mark.parametrize("string_groups", [False, True])
def test_pool_matches_per_group_loop(seed, how, string_groups):
    rng = np.random.default_rng(seed)
    n = 120
    groups = rng.integers(0, 15, n)  # group sizes vary, many smaller than k = 10
    if string_groups:
        groups = np.array([f"vid{g:02d}" for g in groups])
    scores = rng.normal(size=n)
    for k in (1, 3, 10):
        keys, pooled = vm.pool(scores, groups, how=how, k=k, beta=2.0)
        ref_keys, ref = _loop_pool(scores, groups, how, k=k, beta=2.0)
        np.testing.assert_array_equal(keys, ref_keys)
        np.testing.assert_allclose(pooled, ref, rtol=1e-12, atol=1e-12)


def test_pool_topk_clips_k_to_group_size():
    keys, pooled = vm.pool([0.1, 0.9, 0.5, 0.2], ["b", "a", "a", "b"], how="topk", k=10)
    assert keys.tolist() == ["a", "b"]
    np.testing.assert_allclose(pooled, [0.7, 0.15])


def test_pool_softmax_limits_and_stability():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=60)
    groups = np.repeat(np.arange(6), 10)
    _, mean = vm.pool(scores, groups, how="mean")
    _, mx = vm.pool(scores, groups, how="max")
    _, soft_hot = vm.pool(scores, groups, how="softmax", beta=1e4)
    _, soft_cold = vm.pool(scores, groups, how="softmax", beta=1e-8)
    # log-mean-exp lies in [max - log(n)/beta, max]; and -> mean as beta -> 0.
    assert np.all(soft_hot <= mx + 1e-12) and np.all(soft_hot >= mx - np.log(10) / 1e4)
    np.testing.assert_allclose(soft_cold, mean, atol=1e-7)
    _, soft_mid = vm.pool(scores, groups, how="softmax", beta=1.0)
    assert np.all((mean <= soft_mid) & (soft_mid <= mx))
    # Huge logits would overflow exp() in a naive implementation.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, big = vm.pool([1000.0, 999.0], [0, 0], how="softmax", beta=5.0)
    assert big[0] == pytest.approx(1000.0 + math.log((1 + math.exp(-5.0)) / 2) / 5.0)


# --------------------------------------------------------------------------- table


def _scored_manifest(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for split, n_real in (("train", 30), ("test", 12)):
        for method, n, shift in (("real", n_real, 0.0), ("faceswap", 10, 2.0), ("lipsync", 8, 0.5)):
            logit = rng.normal(size=n) + shift
            for z in logit:
                rows.append(
                    {
                        "split": split,
                        "method": method,
                        "label": int(method != "real"),
                        "score": float(np.round(1 / (1 + np.exp(-z)), 2)),
                    }
                )
    return pd.DataFrame(rows)


def test_table_scores_each_method_against_all_real_clips_of_its_split():
    df = _scored_manifest()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = vm.table(df, n_bins=10)
    assert list(out.columns[:2]) == ["split", "method"]
    assert set(zip(out.split, out.method, strict=True)) == {
        (s, m) for s in ("train", "test") for m in ("all", "real", "faceswap", "lipsync")
    }
    for split in ("train", "test"):
        part = df[df.split == split]
        real = part[part.method == "real"]
        for method in ("faceswap", "lipsync"):
            scored = pd.concat([real, part[part.method == method]])
            row = out[(out.split == split) & (out.method == method)].iloc[0]
            assert row.auc == pytest.approx(
                skm.roc_auc_score(scored.label, scored.score), abs=1e-12
            )
            assert row.auc == vm.roc_auc(scored.label, scored.score)
            assert (row.n_pos, row.n_neg) == (int((part.method == method).sum()), len(real))
            assert row.mean_score == pytest.approx(part[part.method == method].score.mean())
        row_all = out[(out.split == split) & (out.method == "all")].iloc[0]
        assert row_all.auc == vm.roc_auc(part.label, part.score)
        assert row_all.n == len(part)
        row_real = out[(out.split == split) & (out.method == "real")].iloc[0]
        assert row_real.n == row_real.n_neg == len(real) and row_real.n_pos == 0
        assert row_real.fpr == pytest.approx((real.score >= 0.5).mean())
        assert row_real.mean_score == pytest.approx(real.score.mean())
        assert math.isnan(row_real.auc) and math.isnan(row_real.brier)
    # Easy fakes (faceswap) are easier than subtle ones (lipsync) in this fixture.
    train = out[out.split == "train"].set_index("method")
    assert train.auc["faceswap"] > train.auc["lipsync"]


def test_table_without_method_and_validation():
    df = _scored_manifest(1)
    out = vm.table(df, by=("split",), is_prob=False)
    assert sorted(out.split) == ["test", "train"] and "brier" not in out.columns
    test = df[df.split == "test"]
    assert out.set_index("split").auc["test"] == vm.roc_auc(test.label, test.score)
    overall = vm.table(df, by=(), n_bins=10)
    assert len(overall) == 1 and overall.n.iloc[0] == len(df)

    bad = df.copy()
    bad.loc[bad.index[0], "label"] = 1  # a real clip labelled fake
    with pytest.raises(ValueError, match="label=0"):
        vm.table(bad, n_bins=10)
    with pytest.raises(ValueError, match="missing column"):
        vm.table(df, score_col="prob", n_bins=10)


def test_infinite_scores_are_ranked_without_warnings():
    # Saturated logits (+-inf) are legitimate scores; tied infinities must not make
    # inf - inf = nan inside the curve construction.
    y = np.array([0, 1, 1, 0, 1])
    s = np.array([-np.inf, np.inf, 0.3, 0.2, np.inf])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert vm.roc_auc(y, s) == 1.0
        assert vm.eer(y, s) == (0.0, 0.3)
        _, pooled = vm.pool(s, [0, 0, 1, 1, 2], how="softmax", beta=5.0)
    expected = np.log(np.mean(np.exp(5.0 * np.array([0.3, 0.2])))) / 5.0
    np.testing.assert_allclose(pooled, [np.inf, expected, np.inf], rtol=1e-12)


# --------------------------------------------------------------------------- single sources


def test_ece_bins_have_no_default():
    # The pipeline's bins are metrics.ece_bins; a default here once gave training's reports
    # 15 bins while calibrate and ensemble used 10.
    y, p = [0, 1, 1, 0], [0.1, 0.8, 0.3, 0.6]  # bins of 0.5 mix the labels, bins of 0.1 do not
    for fn in (vm.ece, vm.reliability, vm.ece_if_calibrated):
        assert inspect.signature(fn).parameters["n_bins"].default is inspect.Parameter.empty, fn.__name__
    with pytest.raises(TypeError):
        vm.ece(y, p)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        vm.reliability(y, p)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        vm.ece_if_calibrated(p)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="n_bins"):
        vm.summarize(y, p)
    with pytest.raises(TypeError, match="n_bins"):
        vm.table(pd.DataFrame({"score": p, "label": y, "split": "test", "method": ["real", "x", "x", "real"]}))
    assert "ece" not in vm.summarize(y, p, is_prob=False)  # no ECE, no bins needed
    assert vm.summarize(y, p, n_bins=10)["ece"] == vm.ece(y, p, 10) != vm.ece(y, p, 2)


def test_pool_parameters_have_no_default():
    # k and beta are PoolingConfig's (calibrate.pooling); a rule that needs one must get it.
    params = inspect.signature(vm.pool).parameters
    assert params["how"].default is inspect.Parameter.empty
    assert params["k"].default is None and params["beta"].default is None
    with pytest.raises(TypeError, match="needs k"):
        vm.pool([0.1, 0.9], [0, 0], "topk")
    with pytest.raises(TypeError, match="needs beta"):
        vm.pool([0.1, 0.9], [0, 0], "softmax")
    assert vm.pool([0.1, 0.9], [0, 0], "mean")[1] == pytest.approx([0.5])  # mean and max need neither


# --------------------------------------------------------------------------- intervals


def test_cluster_bootstrap_covers_the_truth_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(200):
        person = rng.normal(0, 1, 30)  # a shared effect per person: rows are not independent
        x = np.repeat(person, 5) + rng.normal(0, 0.3, 150)
        iv = vm.cluster_bootstrap(np.repeat(np.arange(30), 5), lambda r, x=x: {"mean": float(x[r].mean())}, 300, 0.95,
                               seed=int(rng.integers(1 << 30)))["mean"]
        hits += iv["lo"] <= 0.0 <= iv["hi"]
    assert 0.88 <= hits / 200 <= 0.99


def test_cluster_bootstrap_is_wider_than_a_row_bootstrap_when_people_repeat() -> None:
    rng = np.random.default_rng(1)
    x = np.repeat(rng.normal(0, 1, 40), 8) + rng.normal(0, 0.1, 320)
    stat = lambda r: {"mean": float(x[r].mean())}  # noqa: E731
    by_person = vm.cluster_bootstrap(np.repeat(np.arange(40), 8), stat, 500, 0.95)["mean"]
    by_row = vm.cluster_bootstrap(np.arange(320), stat, 500, 0.95)["mean"]
    assert (by_person["hi"] - by_person["lo"]) > 2 * (by_row["hi"] - by_row["lo"])
    assert by_person["value"] == pytest.approx(x.mean())


def test_cluster_bootstrap_leaves_undefined_draws_out_and_is_reproducible() -> None:
    y = np.array([0, 1, 0, 1, 1, 1])
    s = np.array([0.1, 0.9, 0.2, 0.8, 0.7, 0.6])
    groups = np.array(["a", "a", "b", "b", "c", "c"])  # c has no real: some draws have no AUC
    stat = lambda r: {"auc": vm.roc_auc(y[r], s[r])}  # noqa: E731
    a = vm.cluster_bootstrap(groups, stat, 200, 0.9, seed=3)
    assert a == vm.cluster_bootstrap(groups, stat, 200, 0.9, seed=3)
    assert a["auc"] == {"value": 1.0, "lo": 1.0, "hi": 1.0}
    nothing = vm.cluster_bootstrap(np.array(["c", "c"]), lambda r: {"auc": vm.roc_auc(y[4:][r], s[4:][r])}, 50, 0.9)
    assert math.isnan(nothing["auc"]["value"]) and math.isnan(nothing["auc"]["lo"])
    with pytest.raises(ValueError, match="confidence"):
        vm.cluster_bootstrap(groups, stat, 10, 1.0)


@pytest.mark.parametrize(("n", "rate"), [(40, 0.05), (250, 0.05), (1000, 0.3), (7, 0.5), (100, 0.0), (10, 1.0)])
def test_binomial_range_matches_scipy(n: int, rate: float) -> None:
    from scipy.stats import binom

    lo, hi = vm.binomial_range(n, rate, 0.95)
    assert lo == pytest.approx(binom.ppf(0.025, n, rate) / n)
    assert hi == pytest.approx(binom.ppf(0.975, n, rate) / n)
