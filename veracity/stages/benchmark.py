"""The ``benchmark`` stage: the bundle judged on people no split has seen, on the served path.

Two DVC stages make the benchmark:

- :func:`~veracity.stages.generate.benchmark_corpus` writes a second synthetic corpus
  (``data/benchmark``): the ``generate`` section with the benchmark's own seed and
  people, every manipulation method for every person. (It lives with ``generate`` so that
  a change to the scoring below does not regenerate the corpus.)
- :func:`benchmark` analyses every clip with the bundle's
  :class:`~veracity.analyzer.Analyzer` (the path ``veracity analyze`` and the service
  take, extraction included), in ``benchmark.workers`` processes; re-encodes the clips
  of ``benchmark.reencode_identities`` people at ``benchmark.reencode_crf`` and analyses
  them again; and reports every figure with a bootstrap interval that resamples people,
  not clips (a person's clips share a face and a voice, so they are not independent).

Beside the full figures it reports each modality judged alone (``alone``: ``video`` as a
file without usable audio is judged; ``audio`` as the audio members alone would judge, which
the analyzer does not serve: a faceless file abstains), from the same analyses: a member's calibrated probability does not depend
on the other modality, and neither do its part of the reference profile. And it reports
the share abstained as out of distribution (``ensemble.ood_rate``, the profile's coverage
cost) and what the figures would be without the profile (``without_profile``: every clip
the profile set aside scored with its unreliable probability), so the two can be compared.
And for each member, what the call would be if that member gave no answer (``without``:
the fallback fitted for the others, :class:`~veracity.decision.Fallback`, on the clips the
full bundle judged).

It writes ``metrics.json`` (a DVC metric, read by the promotion gate in ``register``),
``scores.csv`` (one row per clip and condition), ``plots/roc.csv`` and
``plots/reliability.csv`` (ensemble and members, for ``dvc plots``) and the resolved
config. A clip that abstains is counted in the abstain share and left out of the
figures that need a probability; the run goes on.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from veracity import metrics
from veracity.config import AnalyzeConfig, BenchmarkConfig, write_resolved
from veracity.decision import Thresholds
from veracity.lineage import json_default, sha256_file
from veracity.robustness import stable_key
from veracity.stages import StageError

log = logging.getLogger(__name__)

METRICS_JSON = "metrics.json"
SCORES_CSV = "scores.csv"
ROC_CSV = "plots/roc.csv"
RELIABILITY_CSV = "plots/reliability.csv"
ENSEMBLE = "ensemble"
CLEAN = "clean"
ABSTAIN = "ABSTAIN"


class BenchmarkError(StageError):
    """The benchmark cannot be run or would not mean what it says (the message says why)."""


# ----------------------------------------------------------------------- scoring

def _score(analyzer: Any, task: tuple[str, str, int | None, str]) -> dict[str, Any]:
    """Analyse one clip (re-encoded first when a CRF is given); a failure is a row, not a stopped run."""
    from veracity.robustness import reencode_video

    video_id, path, crf, tmp = task
    row = _row_of(task)
    target = Path(path)
    if crf is not None:
        target = Path(tmp) / f"{video_id}.crf{crf}.mp4"
        try:
            reencode_video(path, target, int(crf))
        except Exception as exc:  # noqa: BLE001 - one clip's failure is a row, not a stopped run
            return _failed(analyzer, task, f"re-encode at crf {crf} failed: {type(exc).__name__}: {exc}")
    report = analyzer.analyze(target)
    if crf is not None:
        target.unlink(missing_ok=True)
    row.update(verdict=report.verdict, probability=report.probability, reason=report.reason,
               message=report.message if report.verdict == ABSTAIN or report.reason else "",
               judged=",".join(report.judged), disagreement=report.disagreement)
    row.update({f"p_{name}": m["probability"] for name, m in report.members.items()})
    ood = report.ood or {}
    row["ood_score"] = ood.get("ood_score")
    # What the profile found out of profile, by name: the figures of one modality alone
    # count only its own members and facts.
    row["ood_members"] = ";".join(sorted(n for n, m in (ood.get("members") or {}).items() if m.get("out")))
    row["ood_facts"] = ";".join(sorted(n for n, f in (ood.get("facts") or {}).items() if f.get("out") and f.get("gated")))
    person = next((p for p in report.persons if p.get("track") == report.person), None)
    row["unreliable_probability"] = person.get("unreliable_probability") if person else None
    return row


def _row_of(task: tuple[str, str, int | None, str]) -> dict[str, Any]:
    video_id, _, crf, _ = task
    return {"video_id": video_id, "condition": CLEAN if crf is None else f"crf{crf}"}


def _failed(analyzer: Any, task: tuple[str, str, int | None, str], message: str) -> dict[str, Any]:
    """The ABSTAIN ``error`` row of a clip whose analysis raised or killed its process."""
    return {**_row_of(task), "verdict": ABSTAIN, "probability": None, "reason": "error", "message": message[:300]}


def analyse_clips(tasks: list[tuple[str, str, int | None, str]], bundle: Path, *, workers: int, device: str,
                  analyze: AnalyzeConfig, progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """One row per task ``(video_id, path, crf or None, scratch dir)``: the bundle's verdict,
    probability, reason and each member's probability (``p_<member>``), in ``workers``
    processes with one Analyzer each (:func:`veracity.pool.run_tasks`); a clip that fails,
    or whose process dies, is an ABSTAIN ``error`` row and the others go on."""
    from veracity.pool import run_tasks

    return list(run_tasks(tasks, _score, bundle, on_error=_failed, workers=workers, device=device, cfg=analyze,
                          progress=progress))


def _reencoded_people(identities: list[str], k: int) -> list[str]:
    """``k`` people chosen by a stable hash of their names (not the first ``k`` in order)."""
    return sorted(sorted(identities, key=lambda i: (stable_key("reencode", i), i))[:k])


# ----------------------------------------------------------------------- figures


def _figures(clean: pd.DataFrame, names: list[str], thresholds: Thresholds,
             ece_bins: int) -> Callable[[np.ndarray], dict[str, float]]:
    """The benchmark's figures on any subset of rows of ``clean`` (one clip per row)."""
    y_all = clean["label"].to_numpy(np.int64)
    verdict_all = clean["verdict"].to_numpy(str)
    scored_all = verdict_all != ABSTAIN
    prob_all = clean["probability"].to_numpy(np.float64)
    member_all = {n: clean[f"p_{n}"].to_numpy(np.float64) for n in names}
    method_all = clean["method"].to_numpy(str)
    methods = sorted(set(method_all) - {"real"})

    # Columns an older scores table lacks read as "none given".
    reason = clean.get("reason", pd.Series(index=clean.index, dtype=object)).to_numpy(object)
    ood_all = reason == "out_of_distribution"
    disagree_all = reason == "member_disagreement"
    # The figures the bundle would show without its profile: what it set aside, scored anyway.
    unreliable = clean.get("unreliable_probability", pd.Series(np.nan, index=clean.index)).to_numpy(np.float64)
    prob_any = np.where(ood_all, unreliable, prob_all)

    def stats(rows: np.ndarray) -> dict[str, float]:
        out = {"abstain_rate": float(np.mean(~scored_all[rows])) if rows.size else math.nan,
               "ood_rate": float(np.mean(ood_all[rows])) if rows.size else math.nan,
               "disagreement_rate": float(np.mean(disagree_all[rows])) if rows.size else math.nan}
        both = rows[scored_all[rows] | ood_all[rows]]
        out["without_profile.auc"] = metrics.roc_auc(y_all[both], prob_any[both])
        out["without_profile.ece"] = metrics.ece(y_all[both], prob_any[both], ece_bins)
        rows = rows[scored_all[rows]]
        y, p, m = y_all[rows], prob_all[rows], method_all[rows]
        rates = thresholds.rates(p, y)  # the Analyzer's verdicts come from these thresholds
        out.update(auc=metrics.roc_auc(y, p), ap=metrics.average_precision(y, p), ece=metrics.ece(y, p, ece_bins),
                   brier=metrics.brier(y, p), **{k: rates[k] for k in ("fpr", "tpr", "uncertain_rate")})
        for n in names:
            out[f"{n}.auc"] = metrics.roc_auc(y, member_all[n][rows])
        real = m == "real"
        for method in methods:
            keep = real | (m == method)
            out[f"method.{method}.{ENSEMBLE}"] = metrics.roc_auc(y[keep], p[keep])
            for n in names:
                out[f"method.{method}.{n}"] = metrics.roc_auc(y[keep], member_all[n][rows][keep])
        return out

    return stats


def _alone_views(clean: pd.DataFrame, spec: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """Each modality judged alone, per clip: ``verdict``, ``probability``, ``label``, ``keep``.

    The probability is the highest calibrated probability of the modality's members (the
    bundle's rule for one modality, :meth:`veracity.bundle.Bundle.score`), the verdict its
    validation-fitted ``modality_thresholds``. A clip abstains when the full analysis
    abstained before scoring, or when one of this modality's members or facts was out of
    profile (audio facts do not count for video, nor face facts for audio). The label is
    the target of the member that gave the probability, and a clip counts (``keep``) only
    where that member speaks about it (reals and its target methods).
    """
    from veracity.bundle import ALONE_MODALITIES
    from veracity.calibration import target_mask
    from veracity.profile import AUDIO_FACTS, GATED_FACTS

    fired = [set(f"{a};{b}".split(";")) - {""} for a, b in
             zip(clean["ood_members"].fillna(""), clean["ood_facts"].fillna(""), strict=True)]
    rows = np.arange(len(clean))
    views = {}
    for mod, th in (spec.get("modality_thresholds") or {}).items():
        members = [m for m in spec["members"] if m["modality"] == mod]
        if mod not in ALONE_MODALITIES or not members:
            continue
        thr = Thresholds.from_dict(th)
        facts = set(GATED_FACTS) & set(AUDIO_FACTS) if mod == "audio" else set(GATED_FACTS) - set(AUDIO_FACTS)
        watched = facts | {m["name"] for m in members}  # what this modality alone is checked on
        p = clean[[f"p_{m['name']}" for m in members]].to_numpy(np.float64)
        scored = ~np.isnan(p).any(axis=1)
        best = np.where(scored, np.nan_to_num(p, nan=-1.0).argmax(axis=1), 0)
        prob = np.where(scored, p[rows, best], np.nan)
        y = clean[[m["target"] for m in members]].to_numpy(np.float64)[rows, best]
        keep = np.zeros(len(clean), bool)
        for j, m in enumerate(members):
            keep |= (best == j) & target_mask(clean["method"].to_numpy(), m.get("target_methods"))
        ood = np.array([bool(f & watched) for f in fired], bool)
        verdict = np.where(~scored, ABSTAIN, np.where(ood, ABSTAIN, thr.verdicts(np.nan_to_num(prob))))
        views[mod] = pd.DataFrame({"verdict": verdict, "probability": prob, "label": y,
                                   "keep": keep & ~np.isnan(y), "ood": ood & scored})
    return views


def _alone_figures(views: Mapping[str, pd.DataFrame], spec: Mapping[str, Any],
                   ece_bins: int) -> Callable[[np.ndarray], dict[str, float]]:
    """Bootstrap statistics of every modality judged alone (keys ``alone.<modality>.<figure>``)."""

    def stats(rows: np.ndarray) -> dict[str, float]:
        out: dict[str, float] = {}
        for mod, v in views.items():
            thr = Thresholds.from_dict(spec["modality_thresholds"][mod])
            r = rows[v["keep"].to_numpy()[rows]]
            verdict = v["verdict"].to_numpy(str)[r]
            judged = verdict != ABSTAIN
            y, p = v["label"].to_numpy()[r][judged], v["probability"].to_numpy()[r][judged]
            rates = thr.rates(p, y)
            out.update({f"alone.{mod}.abstain_rate": float(np.mean(~judged)) if r.size else math.nan,
                        f"alone.{mod}.ood_rate": float(np.mean(v["ood"].to_numpy()[r])) if r.size else math.nan,
                        f"alone.{mod}.auc": metrics.roc_auc(y, p), f"alone.{mod}.ece": metrics.ece(y, p, ece_bins),
                        **{f"alone.{mod}.{k}": rates[k] for k in ("fpr", "tpr", "uncertain_rate")}})
        return out

    return stats


def _without_figures(clean: pd.DataFrame, spec: Mapping[str, Any],
                     ece_bins: int) -> Callable[[np.ndarray], dict[str, float]]:
    """Bootstrap statistics of each fallback that stands in for one missing member (keys
    ``without.<member>.<figure>``), on the clips the full bundle judged: what a report would
    say if that member gave no answer."""
    from veracity.decision import Fallback

    names = [m["name"] for m in spec["members"]]
    views = {}
    for raw in spec.get("fallbacks") or ():
        fb = Fallback.from_dict(raw)
        if len(fb.members) != len(names) - 1:
            continue
        missing = next(n for n in names if n not in fb.members)
        p = clean[[f"p_{n}" for n in fb.members]].to_numpy(np.float64)
        views[missing] = (fb, np.where(np.isnan(p).any(axis=1), np.nan, fb.fusion.prob(np.nan_to_num(p, nan=0.5))))
    judged = clean["verdict"].to_numpy(str) != ABSTAIN
    y_all = clean["label"].to_numpy(np.int64)

    def stats(rows: np.ndarray) -> dict[str, float]:
        out: dict[str, float] = {}
        for missing, (fb, prob) in views.items():
            r = rows[judged[rows] & ~np.isnan(prob[rows])]
            y, p = y_all[r], prob[r]
            rates = fb.thresholds.rates(p, y)
            out.update({f"without.{missing}.auc": metrics.roc_auc(y, p),
                        f"without.{missing}.ece": metrics.ece(y, p, ece_bins),
                        **{f"without.{missing}.{k}": rates[k] for k in ("fpr", "tpr", "uncertain_rate")}})
        return out

    return stats


def _nest(flat: Mapping[str, dict[str, float]], names: list[str]) -> dict[str, Any]:
    """The flat bootstrap result as ``ensemble`` / ``members`` / ``per_method`` sections."""
    ens = {k: v for k, v in flat.items() if "." not in k}
    ens["without_profile"] = {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith("without_profile.")}
    members = {n: {"auc": flat[f"{n}.auc"]} for n in names}
    per_method: dict[str, dict[str, Any]] = {}
    alone: dict[str, dict[str, Any]] = {}
    without: dict[str, dict[str, Any]] = {}
    for key, v in flat.items():
        if key.startswith("method."):
            _, method, who = key.split(".", 2)
            per_method.setdefault(method, {})[who] = v
        elif key.startswith(("alone.", "without.")):
            section, who, figure = key.split(".", 2)
            (alone if section == "alone" else without).setdefault(who, {})[figure] = v
    return {ENSEMBLE: ens, "members": members, "per_method": per_method, "alone": alone, "without": without}


def _plots(clean: pd.DataFrame, names: list[str], ece_bins: int, out: Path) -> None:
    scored = clean[clean["verdict"] != ABSTAIN]
    y = scored["label"].to_numpy(np.int64)
    roc_rows, rel_rows = [], []
    for who, col in [(ENSEMBLE, "probability"), *((n, f"p_{n}") for n in names)]:
        p = scored[col].to_numpy(np.float64)
        fpr, tpr, _ = metrics.roc_curve(y, p)
        roc_rows += [{"member": who, "fpr": float(a), "tpr": float(b)} for a, b in zip(fpr, tpr, strict=True)]
        rel = metrics.reliability(y, p, ece_bins)
        rel_rows += [{"member": who, "mean_pred": float(a), "frac_pos": float(b), "count": int(c)}
                     for a, b, c in zip(rel["mean_pred"], rel["frac_pos"], rel["count"], strict=True) if c > 0]
    (out / ROC_CSV).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(roc_rows).to_csv(out / ROC_CSV, index=False)
    pd.DataFrame(rel_rows).to_csv(out / RELIABILITY_CSV, index=False)


def _reencode_drop(table: pd.DataFrame, crf: int, draws: int, confidence: float) -> dict[str, Any]:
    """Ensemble AUC on the re-encoded people, clean and re-encoded, on the clips both scored."""
    cond = f"crf{crf}"
    both = table[table["condition"] == CLEAN].merge(table[table["condition"] == cond], on="video_id",
                                                    suffixes=("", "_re"))
    # Clips scored clean that abstain once re-encoded (e.g. the face is no longer found).
    failed = int(((both["verdict"] != ABSTAIN) & (both["verdict_re"] == ABSTAIN)).sum())
    both = both[(both["verdict"] != ABSTAIN) & (both["verdict_re"] != ABSTAIN)].reset_index(drop=True)
    y = both["label"].to_numpy(np.int64)
    p, q = both["probability"].to_numpy(np.float64), both["probability_re"].to_numpy(np.float64)

    def stats(rows: np.ndarray) -> dict[str, float]:
        clean_auc, auc = metrics.roc_auc(y[rows], p[rows]), metrics.roc_auc(y[rows], q[rows])
        return {"clean_auc": clean_auc, "auc": auc, "drop": clean_auc - auc}

    res = metrics.cluster_bootstrap(both["identity"].to_numpy(str), stats, draws, confidence)
    return {"crf": crf, "n": len(both), "n_people": int(both["identity"].nunique()),
            "abstained_after_reencode": failed, **res}


def benchmark(cfg: BenchmarkConfig, analyze: AnalyzeConfig, bundle: Path, corpus: Path, out: Path, *,
              ece_bins: int, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Analyse the benchmark corpus with ``bundle`` and write its figures with intervals (full
    bundle, and each modality judged alone).

    Args:
        cfg: the ``benchmark`` section.
        analyze: the ``analyze`` section (how the Analyzer builds a report).
        bundle: the bundle directory (``veracity ensemble``).
        corpus: the benchmark corpus (:func:`benchmark_corpus`): ``manifest.csv`` + videos.
        out: directory for ``metrics.json``, ``scores.csv``, ``plots/`` and the resolved config.
        ece_bins: bins of the ECE (``metrics.ece_bins``).
        progress: ``progress(done, total)`` per analysed clip.

    Returns:
        What ``metrics.json`` holds: ``ensemble`` (AUC, AP, ECE, Brier, FPR, TPR, uncertain,
        abstain, out-of-distribution and member-disagreement shares, and AUC/ECE
        ``without_profile``), ``members`` (AUC), ``per_method`` (ensemble and member AUC per
        method), ``alone`` (per modality judged alone: AUC, ECE, FPR, TPR, uncertain,
        abstain and out-of-distribution shares), ``without`` (per member, the fallback
        that stands in for it: AUC, ECE, FPR, TPR, uncertain), ``reencode`` (AUC drop), each
        ``{value, lo, hi}``; plus counts, the
        perfect-calibration ECE at this size, the FPR range a correct threshold shows at
        this size, the bundle's sha256 and thresholds; and ``seconds`` (wall time, not
        written).

    Raises:
        BenchmarkError: no manifest, no bundle, or a corpus without both real and fake clips.
    """
    bundle, corpus, out = Path(bundle), Path(corpus), Path(out)
    manifest_path = corpus / "manifest.csv"
    if not manifest_path.is_file():
        raise BenchmarkError(f"{manifest_path} does not exist: run `veracity benchmark-corpus` first")
    spec_path = bundle / "bundle.json"
    if not spec_path.is_file():
        raise BenchmarkError(f"{bundle} holds no bundle.json: run `veracity ensemble` first")
    spec = json.loads(spec_path.read_text())
    reals = (spec.get("metrics") or {}).get("reals") or {}
    if reals.get("source") == "synthetic" and reals.get("seed") == cfg.seed:
        raise BenchmarkError(f"benchmark.seed ({cfg.seed}) equals ensemble.reals.seed: the bundle's FAKE cuts were set "
                             "on the benchmark's people; choose another seed")
    names = [m["name"] for m in spec["members"]]
    manifest = pd.read_csv(manifest_path)
    if set(manifest["label"]) != {0, 1}:
        raise BenchmarkError(f"{manifest_path} must hold real and fake clips to measure anything")
    people = set(_reencoded_people(sorted(set(manifest["identity"])), cfg.reencode_identities))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="veracity-benchmark-") as tmp:
        tasks = [(r.video_id, str((corpus / r.path).resolve()), None, tmp) for r in manifest.itertuples()]
        tasks += [(r.video_id, str((corpus / r.path).resolve()), cfg.reencode_crf, tmp)
                  for r in manifest.itertuples() if r.identity in people]
        rows = analyse_clips(tasks, bundle, workers=cfg.workers, device=cfg.device, analyze=analyze,
                             progress=progress)
    seconds = time.perf_counter() - t0
    keep = ["video_id", "identity", "method", "label", "video_label", "audio_label"]
    table = pd.DataFrame(rows).merge(manifest[keep], on="video_id")
    for n in names:  # an ABSTAIN row has no member probabilities
        table[f"p_{n}"] = table.get(f"p_{n}", np.nan)
    table = table.sort_values(["condition", "video_id"]).reset_index(drop=True)

    clean = table[table["condition"] == CLEAN].reset_index(drop=True)
    th = Thresholds.from_dict(spec["thresholds"])
    full = _figures(clean, names, th, ece_bins)
    views = _alone_views(clean, spec)
    alone = _alone_figures(views, spec, ece_bins)
    without = _without_figures(clean, spec, ece_bins)
    flat = metrics.cluster_bootstrap(clean["identity"].to_numpy(str),
                                     lambda rows: {**full(rows), **alone(rows), **without(rows)},
                                     cfg.bootstrap, cfg.confidence)
    scored = clean[clean["verdict"] != ABSTAIN]
    n_real = int((scored["label"] == 0).sum())
    floor = metrics.ece_if_calibrated(scored["probability"].to_numpy(np.float64), ece_bins)
    reasons = clean.loc[clean["verdict"] == ABSTAIN, "reason"].value_counts().to_dict()
    result: dict[str, Any] = {
        **_nest(flat, names),
        "reencode": _reencode_drop(table, cfg.reencode_crf, cfg.bootstrap, cfg.confidence),
        "n": len(clean), "n_real": n_real, "n_fake": int((scored["label"] == 1).sum()),
        "n_people": int(clean["identity"].nunique()), "n_abstain": int((clean["verdict"] == ABSTAIN).sum()),
        "abstain_reasons": {str(k): int(v) for k, v in reasons.items()},
        "uncertain_reasons": {str(k): int(v) for k, v in clean.loc[clean["verdict"] == "UNCERTAIN", "reason"]
                              .dropna().value_counts().items()},
        "alone_n": {mod: int(v["keep"].sum()) for mod, v in views.items()},
        "confidence": cfg.confidence, "bootstrap": cfg.bootstrap, "resampled": "people",
        "ece_if_calibrated": floor,
        "thresholds": {"real_below": th.real_below, "fake_at": th.fake_at, "target_fpr": th.target_fpr},
        # Where the FPR of a threshold that truly meets the target lands on this many reals.
        "target_fpr_range": list(metrics.binomial_range(n_real, th.target_fpr, cfg.confidence)),
        "bundle_sha256": sha256_file(spec_path), "clips_analysed": len(table),
    }
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / SCORES_CSV, index=False, float_format="%.6g")
    _plots(clean, names, ece_bins, out)
    (out / METRICS_JSON).write_text(json.dumps(result, indent=1, default=json_default) + "\n")
    write_resolved(cfg, out)
    log.info("benchmark: %d analyses in %.1f s", len(table), seconds)
    # Wall time is returned, not written: metrics.json's hash is in dvc.lock, and must not
    # change from one run to the next.
    return {**result, "seconds": seconds}
