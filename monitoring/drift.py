"""Drift of a window of traffic against what the bundle was validated on: the tests, the decision, the report.

This module owns three things:

1. **The reference** (:class:`Reference`), built from the bundle alone (checksums verified):
   the media facts of the reference profile's held-out clips (``facts.threshold``, the
   val+test clips its thresholds were set on) and their OOD scores (``scores.threshold``);
   the members' calibrated probabilities of the validation clips (the disagreement rule's
   patterns, log-odds clipped at +-5), the fused probability and verdict the bundle's own
   fusion, thresholds and disagreement rule give them. The same columns as the request log.
2. **The tests** (:func:`check`): per column, Evidently's two-sample Kolmogorov-Smirnov test
   (facts, member probabilities, fused probability, OOD score) or chi-square (the shares of
   REAL/UNCERTAIN/FAKE among fully judged rows), and two one-sided binomial tests (the
   ABSTAIN share against ``abstain_rate``, the out-of-distribution share against
   ``ood_rate``) run as Evidently share tests. Every test gets ``alpha / m`` (Bonferroni over
   the ``m`` tests run), so an unshifted window is flagged at most ``alpha`` of the time
   whatever the number of columns; a window under ``min_rows`` rows is not judged, a
   column with under ``min_column_rows`` values in it is left untested (and says so).
   The chi-square is :data:`CHISQUARE`, Evidently's own with the categories in sorted order.
   Probabilities are clipped as the reference's are, so both sides are on one scale.
   Member and fused probabilities and verdicts are compared only on rows judged by every
   modality (the reference's clips have both; a file judged on video alone is scored by
   another rule). Rows are the bundle's own (``bundle_sha256``): another bundle's scores
   are not this one's.
3. **The summary** (:meth:`CheckResult.summary`): drift or not, which columns and rates
   drifted with their p-values and medians, what each kind of drift asks of an operator
   (:data:`ACTIONS`), and the untested columns.

The Evidently report (HTML and JSON) holds the same tests with their plots.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from veracity.profile import FACTS

VERDICT = "verdict_judged"  # REAL/UNCERTAIN/FAKE of fully judged rows, NaN otherwise
ABSTAINED = "abstained"
OUT_OF_PROFILE = "out_of_profile"
OOD_REASON = "out_of_distribution"

# What each kind of signal asks of an operator (README "Monitor" says more).
ACTIONS = {
    "fact": "the media changed (codec, resolution, camera, lighting, voice level): if the scores held, "
            "widen the profile (refit it on recent authentic traffic); if they moved too, retrain with such media",
    "member": "a member scores this traffic unlike validation: a new generation method or media it never saw; "
              "look at the clips, then retrain (or recalibrate if only the scale moved)",
    "fused": "the fused probability or the verdict shares moved: a new method, a change in the share of fakes, "
             "or a calibration that no longer holds: recalibrate on recent labelled traffic, retrain if members moved",
    "ood": "more traffic than expected is outside the reference profile: widen the profile if those inputs are "
           "ones the model should judge (after checking it judges them well), else retrain on them",
    "abstain": "more ABSTAIN answers than expected: see the reasons (no_face, too_short, out_of_distribution) "
               "in the log; fix the client or widen the profile",
}


def _clip_prob(p: np.ndarray | pd.Series, clip: float) -> np.ndarray:
    lo = 1.0 / (1.0 + math.exp(clip))
    return np.clip(np.asarray(p, dtype=np.float64), lo, 1.0 - lo)


@dataclass(frozen=True)
class Reference:
    """What the bundle was validated on, in the request log's columns (see the module docstring).

    Attributes:
        frame: one column per tested signal, NaN where a column has fewer rows than another.
        members: the bundle's members (``p_<member>`` columns), in fusion order.
        modalities: the modalities a fully judged row names.
        bundle_sha256: sha256 of ``bundle.json`` (the analyzer's identity of the bundle).
        clip: the log-odds clip of member and fused probabilities.
        source: where it came from (the bundle's path).
    """

    frame: pd.DataFrame
    members: tuple[str, ...]
    modalities: tuple[str, ...]
    bundle_sha256: str
    clip: float
    source: str

    @classmethod
    def from_bundle(cls, path: Path | str) -> Reference:
        """The reference of the bundle at ``path``.

        Raises:
            veracity.bundle.BundleError: not a bundle, a checksum differs, or it has no
                reference profile or no disagreement rule (whose patterns are the scores).
        """
        from veracity.bundle import BundleError, verify_bundle
        from veracity.decision import Disagreement, Fusion, Thresholds
        from veracity.lineage import sha256_file
        from veracity.profile import ProfileError, ReferenceProfile

        root = Path(path)
        spec = verify_bundle(root)
        if not spec.get("profile") or not spec.get("disagreement"):
            raise BundleError(f"{root}: the bundle has no reference profile or no validation score patterns "
                              "(disagreement rule): nothing to monitor against; rebuild it with this version")
        try:
            profile = ReferenceProfile.load(root / spec["profile"]["path"])
        except ProfileError as exc:
            raise BundleError(str(exc)) from None
        dis = Disagreement.from_dict(spec["disagreement"])
        fusion = Fusion.from_dict(spec["fusion"])
        members = tuple(fusion.members)
        pats = 1.0 / (1.0 + np.exp(-np.asarray(dis.reference, dtype=np.float64)))
        probs = pats[:, [list(dis.members).index(m) for m in members]]
        fused = fusion.prob(probs)
        verdicts = Thresholds.from_dict(spec["thresholds"]).verdicts(fused).astype(object)
        verdicts[dis.flags(probs)] = "UNCERTAIN"  # the disagreement rule, as Bundle.score applies it
        facts = profile.reference_facts("threshold")
        cols: dict[str, np.ndarray] = {f: facts[f].to_numpy(np.float64) for f in FACTS}
        cols["ood_score"] = np.asarray(profile.threshold_scores, dtype=np.float64)
        for i, m in enumerate(members):
            cols[f"p_{m}"] = probs[:, i]
        cols["probability"] = _clip_prob(fused, dis.clip)
        cols[VERDICT] = verdicts
        n = max(len(v) for v in cols.values())
        frame = pd.DataFrame({k: pd.Series(v, dtype=object if k == VERDICT else np.float64).reindex(range(n))
                              for k, v in cols.items()})
        # The reference clips were judged, inside the profile: no abstention among them.
        frame[ABSTAINED] = "no"
        frame[OUT_OF_PROFILE] = "no"
        mods = sorted({m["modality"] for m in spec["members"]})
        return cls(frame=frame, members=members, modalities=tuple(mods),
                   bundle_sha256=sha256_file(root / "bundle.json"), clip=dis.clip, source=str(root))


def current_frame(rows: pd.DataFrame, ref: Reference) -> pd.DataFrame:
    """The window's rows in the reference's columns (see the module docstring for which rows count where)."""
    full = rows["judged"].map(lambda j: isinstance(j, str) and set(j.split(",")) >= set(ref.modalities))
    judged = full & (rows["verdict"] != "ABSTAIN")
    out = pd.DataFrame(index=rows.index)
    for f in FACTS:
        out[f] = pd.to_numeric(rows[f], errors="coerce")
    out["ood_score"] = pd.to_numeric(rows["ood_score"], errors="coerce")
    for m in ref.members:
        col = f"p_{m}"
        vals = rows[col] if col in rows else pd.Series(np.nan, index=rows.index)
        out[col] = np.where(judged, _clip_prob(vals, ref.clip), np.nan)
    out["probability"] = np.where(judged, _clip_prob(rows["probability"], ref.clip), np.nan)
    out[VERDICT] = rows["verdict"].where(judged).astype(object)
    out[ABSTAINED] = np.where(rows["verdict"] == "ABSTAIN", "yes", "no")
    out[OUT_OF_PROFILE] = np.where(rows["reason"] == OOD_REASON, "yes", "no")
    return out.reset_index(drop=True)


def _kind(column: str) -> str:
    if column in FACTS:
        return "fact"
    if column.startswith("p_"):
        return "member"
    return {"ood_score": "ood", "probability": "fused", VERDICT: "fused"}[column]


@dataclass
class CheckResult:
    """One window judged: the decision, the per-test figures and the Evidently snapshot."""

    judged: bool
    drift: bool
    n_rows: int
    alpha: float
    tests: int
    p_values: dict[str, float] = field(default_factory=dict)
    drifted: list[str] = field(default_factory=list)
    rates: dict[str, dict[str, Any]] = field(default_factory=dict)
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)
    untested: dict[str, str] = field(default_factory=dict)
    why_not_judged: str | None = None
    snapshot: Any = None

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary: status, what drifted, what it means, what was not tested."""
        kinds = sorted({c["kind"] for name, c in self.columns.items() if name in self.drifted}
                       | {k for k, r in self.rates.items() if r["drift"]})
        return {"status": "drift" if self.drift else ("no_drift" if self.judged else "not_judged"),
                # null when not judged: the analysts' page (serving/ui) reads this key
                "drift_detected": self.drift if self.judged else None, "judged": self.judged,
                "why_not_judged": self.why_not_judged,
                "rows": self.n_rows, "alpha": self.alpha, "tests": self.tests,
                "alpha_per_test": self.alpha / self.tests if self.tests else None,
                "drifted": self.drifted, "actions": {k: ACTIONS[k] for k in kinds},
                "columns": self.columns, "rates": self.rates, "untested": self.untested}


CHISQUARE = "chisquare_sorted"  # the name Evidently knows :func:`_chisquare_sorted` by


def _chisquare_sorted(reference: pd.Series, current: pd.Series, feature_type: Any,
                      threshold: float) -> tuple[float, bool]:
    """Evidently's chi-square test, with the categories in sorted order.

    Evidently's own takes them from a Python set, whose order of strings changes with each
    process's hash seed; the sums then change in their last bit, and so do the p-value and
    every report that prints it: a stage run twice would not write the same bytes.
    """
    keys = sorted(set(reference.dropna().unique()) | set(current.dropna().unique()), key=str)
    ref, cur = reference.value_counts(), current.value_counts()
    scale = current.shape[0] / reference.shape[0]
    p = float(stats.chisquare([int(cur.get(k, 0)) for k in keys], [ref.get(k, 0) * scale for k in keys])[1])
    return p, p < threshold


@functools.cache  # once per process
def _register_chisquare() -> None:
    from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
    from evidently.legacy.core import ColumnType

    register_stattest(StatTest(name=CHISQUARE, display_name="chi-square p_value",
                               allowed_feature_types=[ColumnType.Categorical]), default_impl=_chisquare_sorted)


def _binomial(k: int, n: int, p0: float, alpha: float) -> tuple[float, float]:
    """One-sided p-value of ``k`` of ``n`` at rate ``p0``, and the largest share not rejected at ``alpha``."""
    p = float(stats.binom.sf(k - 1, n, p0)) if k > 0 else 1.0
    crit = int(stats.binom.isf(alpha, n, p0))  # P(X > crit) <= alpha
    return p, crit / n


def check(rows: pd.DataFrame, ref: Reference, cfg: Any, bundle_only: bool = True) -> CheckResult:
    """Judge one window of typed request-log rows (:attr:`monitoring.window.Window.rows`) against ``ref``.

    Args:
        rows: the window's served rows.
        ref: the bundle's reference.
        cfg: a :class:`veracity.config.MonitorConfig` (alpha, min_rows, min_column_rows,
            abstain_rate, ood_rate).
        bundle_only: keep only rows the reference's bundle wrote (rows without a sha count).
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import CategoryCount, ValueDrift
    from evidently.tests import lte

    _register_chisquare()
    n_all = len(rows)
    if bundle_only and n_all:
        rows = rows[rows["bundle_sha256"].isna() | (rows["bundle_sha256"] == ref.bundle_sha256)]
    n = len(rows)
    if n < cfg.min_rows:
        other = f" ({n_all - n} other rows were written by other bundles)" if n_all > n else ""
        return CheckResult(judged=False, drift=False, n_rows=n, alpha=cfg.alpha, tests=0,
                           why_not_judged=f"{n} rows of this bundle in the window{other}; at least {cfg.min_rows} "
                                          "are needed to judge drift (monitor.min_rows)")
    cur = current_frame(rows, ref)
    numeric = [*FACTS, "ood_score", *(f"p_{m}" for m in ref.members), "probability"]
    tested, untested = [], {}
    for col in [*numeric, VERDICT]:
        n_cur, n_ref = int(cur[col].notna().sum()), int(ref.frame[col].notna().sum())
        if n_cur < cfg.min_column_rows:
            untested[col] = f"{n_cur} values in the window (< {cfg.min_column_rows})"
        elif n_ref < cfg.min_column_rows:
            untested[col] = f"{n_ref} values in the reference (< {cfg.min_column_rows})"
        else:
            tested.append(col)
    m = len(tested) + 2
    each = cfg.alpha / m
    rates = {}
    for key, col, p0 in (("abstain", ABSTAINED, cfg.abstain_rate), ("ood", OUT_OF_PROFILE, cfg.ood_rate)):
        k = int((cur[col] == "yes").sum())
        p, bound = _binomial(k, n, p0, each)
        rates[key] = {"share": k / n, "count": k, "expected": p0, "bound": bound, "p_value": p, "drift": p < each}
    metrics: list[Any] = [ValueDrift(column=c, method=CHISQUARE if c == VERDICT else "ks", threshold=each)
                          for c in tested]
    metrics += [CategoryCount(column=ABSTAINED, category="yes", share_tests=[lte(rates["abstain"]["bound"])]),
                CategoryCount(column=OUT_OF_PROFILE, category="yes", share_tests=[lte(rates["ood"]["bound"])])]
    cats = [VERDICT, ABSTAINED, OUT_OF_PROFILE]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=cats)
    with warnings.catch_warnings():  # scipy's divide warnings on an empty verdict class; the p-value stands
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = Report(metrics, include_tests=True).run(
            Dataset.from_pandas(cur[numeric + cats], data_definition=definition),
            Dataset.from_pandas(ref.frame[numeric + cats], data_definition=definition))
    p_values = {}
    for item in snapshot.dict()["metrics"]:
        config = item["config"]
        if config["type"].endswith("ValueDrift"):
            p_values[config["column"]] = float(item["value"])
    columns = {}
    for c in tested:
        cur_v, ref_v = cur[c].dropna(), ref.frame[c].dropna()
        entry: dict[str, Any] = {"kind": _kind(c), "p_value": p_values[c], "drift": p_values[c] < each,
                                 "n": len(cur_v), "n_reference": len(ref_v)}
        if c == VERDICT:
            entry["shares"] = cur_v.value_counts(normalize=True).round(4).to_dict()
            entry["reference_shares"] = ref_v.value_counts(normalize=True).round(4).to_dict()
        else:
            entry["median"] = float(np.median(cur_v.astype(float)))
            entry["reference_median"] = float(np.median(ref_v.astype(float)))
        columns[c] = entry
    drifted = [c for c in tested if columns[c]["drift"]] + [f"{k}_rate" for k, r in rates.items() if r["drift"]]
    return CheckResult(judged=True, drift=bool(drifted), n_rows=n,
                       alpha=cfg.alpha, tests=m, p_values=p_values, drifted=drifted, rates=rates, columns=columns,
                       untested=untested, snapshot=snapshot)
