"""The ``ensemble`` stage: assemble the bundle, measure it through its own forward pass, ship it.

The test-split scores come from the bundle's own forward pass (not the training
predictions), so what is measured is what ships. Three differences are bounded, and the
stage fails past them (:class:`~veracity.stages.BoundError`), because past them the
bundle is not the model that was evaluated:

- the bundle's window logits against the training run's (``ensemble.consistency_tolerance``);
- the written bundle, reloaded from disk (checksums verified), against the one in memory
  (same tolerance);
- each member's ONNX export against PyTorch (``ensemble.onnx_tolerance``; a member whose
  export misses it at export time ships without ONNX, and the stage says so).

Before it ships, every FAKE cut is set again on authentic clips of people no split has
seen (``ensemble.reals``: by default 300 generated clips of 150 new people), analysed
through the bundle's own Analyzer (:func:`fit_on_reals`): validation's 40 reals from 20
people leave the false-positive rate on new people to chance.

The quality bars (``gate``) are measured on the test split and printed with PASS/FAIL,
for information; ``register`` enforces them on the benchmark's intervals.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from veracity import metrics
from veracity.bundle import Bundle, BundleError, Evidence, first_windows, window_table
from veracity.calibration import target_mask
from veracity.config import (
    AnalyzeConfig,
    EnsembleConfig,
    ExtractConfig,
    GateConfig,
    GenerateConfig,
    RealsConfig,
    to_plain,
    write_resolved,
)
from veracity.data import collate, load_clips
from veracity.decision import Fallback, Thresholds, fit_thresholds
from veracity.lineage import data_hash, json_default, member_hashes
from veracity.metrics import QualityCheck
from veracity.models.checkpoint import WINDOW_PREDICTIONS
from veracity.stages import BoundError, StageError

EXAMPLE_WINDOWS = 4  # windows in the export example (and the reload / ONNX comparisons)
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")


def _method_aucs(table: pd.DataFrame, col: str) -> dict[str, dict[str, float]]:
    real = table[table["method"] == "real"]
    out = {}
    for method in sorted(set(table["method"]) - {"real"}):
        part = pd.concat([real, table[table["method"] == method]])
        out[method] = {"auc": metrics.roc_auc(part["label"], part[col]), "n_fake": int((table["method"] == method).sum())}
    return out


def _consistency(windows: pd.DataFrame, models: Path, names: list[str]) -> dict[str, float]:
    """Per member, the max abs window-logit difference between the bundle and training."""
    out = {}
    for name in names:
        ref = pd.read_csv(models / name / WINDOW_PREDICTIONS)
        both = windows[windows["member"] == name].merge(ref[ref["split"] == "test"], on=["video_id", "start"],
                                                         suffixes=("", "_train"))
        if both.empty:
            raise BoundError(f"member {name!r}: none of the bundle's test windows is in {models / name / WINDOW_PREDICTIONS}"
                             " (trained on other features?): the bundle cannot be checked against training")
        out[name] = float(np.max(np.abs(both["logit"] - both["logit_train"])))
    return out


def reals_clips(cfg: RealsConfig, generate_cfg: GenerateConfig, work: Path) -> list[tuple[str, Path]]:
    """``(id, path)`` of the authentic clips the FAKE cuts are set on: generated into ``work``
    (left alone when up to date), or every video under ``cfg.folder``.

    Raises:
        StageError: the synthetic reals would be the training people (same seed as
            ``generate``), or the folder holds no video.
    """
    if cfg.source == "synthetic":
        if cfg.seed == generate_cfg.seed:
            raise StageError(f"ensemble.reals.seed ({cfg.seed}) equals generate.seed: the cuts would be set on "
                             "the training people; choose another seed")
        from veracity.stages.generate import generate

        generate(cfg.corpus(generate_cfg), work)
        manifest = pd.read_csv(work / "manifest.csv")
        return [(str(r.video_id), work / str(r.path)) for r in manifest.itertuples()]
    folder = Path(str(cfg.folder))
    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES) \
        if folder.is_dir() else []
    if not files:
        raise StageError(f"ensemble.reals.folder {folder} holds no video ({', '.join(VIDEO_SUFFIXES)})")
    return [(str(f.relative_to(folder)), f) for f in files]


def _modality_view(bundle: Bundle, mod: str, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(probability, label, keep)`` of each row judged on ``mod`` alone: the highest
    calibrated probability of its members, against the target of the member that gave it
    (the rule of ``calibrate``'s ``modality_thresholds``)."""
    members = [m for m in bundle.members if m.modality == mod]
    p = table[[f"p_{m.name}" for m in members]].to_numpy(np.float64)
    best = np.nan_to_num(p, nan=-1.0).argmax(axis=1)
    rows = np.arange(len(table))
    labels = np.stack([table[m.target].to_numpy(np.float64) if m.target in table else np.full(len(table), np.nan)
                       for m in members], axis=1)
    keep = np.zeros(len(table), bool)
    for j, m in enumerate(members):
        keep |= (best == j) & target_mask(table["method"].to_numpy(), m.target_methods) \
            if "method" in table else (best == j)
    y = labels[rows, best]
    return p[rows, best], y, keep & ~np.isnan(y) & ~np.isnan(p[rows, best])


def fit_on_reals(bundle: Bundle, val: pd.DataFrame, reals: pd.DataFrame) -> dict[str, Any]:
    """Set every FAKE cut of ``bundle`` on the authentic clips it judged, in place.

    The fused cut, each modality's cut alone (``modality_thresholds``) and each fallback's
    cut are set at their target false-positive rate on ``reals`` (rows of the bundle's
    Analyzer: ``verdict`` and ``p_<member>``; the clips it abstained on are left out, as they
    would be in service). Each UNCERTAIN band is then the same share of validation clips
    (``val``: calibrate's scores, ``p_<member>``, ``label``, ``method``) just below the new
    cut.

    Returns:
        What was done, per rule: the validation cut and the new one, and the share of the
        reals at or above each.

    Raises:
        StageError: no real clip was judged with every member.
    """
    names = bundle.names
    pcols = [f"p_{n}" for n in names]
    reals = reals.copy()  # the caller's rows stay as they were
    for c in pcols:  # an ABSTAIN row has no member probabilities
        reals[c] = reals.get(c, np.nan)
    judged = reals[(reals["verdict"] != "ABSTAIN") & reals[pcols].notna().all(axis=1)].reset_index(drop=True)
    if judged.empty:
        raise StageError(f"none of the {len(reals)} authentic clips (ensemble.reals) was judged by every member: "
                         f"abstain reasons {reals['reason'].value_counts().to_dict()}")
    val = val.reset_index(drop=True)
    y_val = val["label"].to_numpy(np.float64)
    report: dict[str, Any] = {
        "n": len(reals), "n_judged": len(judged),
        "abstain_reasons": {str(k): int(v) for k, v in reals.loc[reals["verdict"] == "ABSTAIN", "reason"]
                            .value_counts().items()},
        "rules": {}}

    def refit(key: str, th: Thresholds, p_val: np.ndarray, y: np.ndarray, p_reals: np.ndarray) -> Thresholds:
        new = fit_thresholds(p_val, y, th.target_fpr, th.target_uncertain, reals=p_reals)
        report["rules"][key] = {"n_reals": int(p_reals.size), "fake_at_val": th.fake_at, "fake_at": new.fake_at,
                                "real_below": new.real_below,
                                "reals_fpr_at_val_cut": float(np.mean(p_reals >= th.fake_at)),
                                "reals_fpr": float(np.mean(p_reals >= new.fake_at))}
        return new

    bundle.thresholds = refit("fused", bundle.thresholds, bundle.fusion.prob(val[pcols].to_numpy()), y_val,
                              bundle.fusion.prob(judged[pcols].to_numpy()))
    for mod, th in list(bundle.modality_thresholds.items()):
        p_val, y_mod, keep = _modality_view(bundle, mod, val)
        p_reals, _, _ = _modality_view(bundle, mod, judged.assign(method="real"))
        bundle.modality_thresholds[mod] = refit(f"alone.{mod}", th, p_val[keep], y_mod[keep], p_reals)
    for key, fb in list(bundle.fallbacks.items()):
        cols = [f"p_{n}" for n in fb.members]
        th = refit("+".join(fb.members), fb.thresholds, fb.fusion.prob(val[cols].to_numpy()), y_val,
                   fb.fusion.prob(judged[cols].to_numpy()))
        bundle.fallbacks[key] = Fallback(fb.fusion, th)
    return report


def quality_checks(ens: dict[str, Any], member_auc: dict[str, float], gate_row: dict[str, Any],
                   gate: GateConfig) -> list[QualityCheck]:
    """The bundle's quality bars (``gate``) on the test split, for information: the
    promotion gate judges them on the benchmark, with intervals."""
    best = max(member_auc, key=lambda n: member_auc[n])
    return [
        QualityCheck(f"ensemble test AUC >= best member ({best}, {member_auc[best]:.4f})", ens["auc"],
                     member_auc[best], ">="),
        QualityCheck("ensemble test AUC", ens["auc"], gate.min_auc, ">="),
        QualityCheck("ensemble test ECE after calibration", ens["ece"], gate.max_ece, "<="),
        QualityCheck(f"ensemble AUC drop under {gate_row.get('corruption', '?')} {gate_row.get('strength', '?')}",
                     # None: the attack sweep did not include the gate's strength (not measured: FAIL)
                     math.nan if gate_row.get("drop") is None else float(gate_row["drop"]), gate.max_robustness_drop,
                     "<="),
    ]


def ensemble(cfg: EnsembleConfig, gate: GateConfig, extract_cfg: ExtractConfig, models: Path, calibration: Path,
             features: Path, out: Path, reports: Path, *, ece_bins: int, root: Path,
             robustness: Path | None = None, calibrate_report: Path | None = None,
             generate_cfg: GenerateConfig | None = None, analyze: AnalyzeConfig | None = None,
             reals_work: Path | None = None) -> dict[str, Any]:
    """Assemble, evaluate on the test split, export, save and verify the bundle.

    Args:
        cfg: the ``ensemble`` section (ONNX export, evidence rules, tolerances).
        gate: the quality bars reported (``gate`` section).
        extract_cfg: the extraction settings stored in the bundle (the analyzer extracts
            with them) and the usable statuses of test clips.
        models: directory with one folder per trained member.
        calibration: ``calibration.json`` of the calibrate stage.
        features: the extracted features (the test split is scored).
        out: the bundle directory (replaced).
        reports: directory for ``metrics.json``, ``scores.csv`` and the resolved config.
        ece_bins: bins of the ECE (``metrics.ece_bins``).
        root: repository root, whose ``data.dvc`` and ``dvc.lock`` give the bundle's lineage.
        robustness: ``summary.json`` of the attack stage (stored, and the gate's drop).
        calibrate_report: ``metrics.json`` of the calibrate stage (per-member figures); its
            ``scores.csv`` beside it gives the validation clips the UNCERTAIN bands keep.
        generate_cfg: the ``generate`` section (the synthetic reals are made with it).
        analyze: the ``analyze`` section (how the Analyzer reads the reals).
        reals_work: where the synthetic reals are generated (kept: regenerated only when
            out of date).

    Returns:
        The metrics written to ``reports/metrics.json``; ``checks`` holds the quality bars.

    Raises:
        BundleError: the members and the calibration do not fit together, or no test clips.
        BoundError: a consistency, reload or ONNX difference is past its tolerance.
        StageError: ``ensemble.reals`` cannot be made or judged.
    """
    models, out, reports, root = Path(models), Path(out), Path(reports), Path(root)
    for path in (calibration, robustness, calibrate_report):
        if path is not None and not Path(path).is_file():
            raise BundleError(f"{path} does not exist; run the stage that writes it first (dvc repro)")
    cal = json.loads(Path(calibration).read_text())
    bundle = Bundle.assemble(models, cal, Evidence(cfg.min_face_ratio, cfg.min_duration_s, cfg.require_audio))
    clips = load_clips(features, ["test"], extract_cfg.usable_statuses)
    if not clips:
        raise BundleError(f"no usable test clips under {features}")
    extra_extract = to_plain(extract_cfg, exclude=extract_cfg.EXECUTION_ONLY)
    profile_summary = None
    if cfg.profile.enabled:
        from veracity.profile import fit_profile

        # Fitted on the people the members learnt from, its threshold on held-out people of
        # the corpus (ensemble.profile.threshold_splits): never on the benchmark or anything
        # it will be checked against.
        bundle.profile = fit_profile(bundle, features, threshold_split=cfg.profile.threshold_splits,
                                     target_rate=cfg.profile.target_rate,
                                     method=cfg.profile.method, margin=cfg.profile.margin,
                                     usable_statuses=extract_cfg.usable_statuses)
        profile_summary = bundle.profile.summary()
    reals_report = None
    if cfg.reals.source != "none":
        reals_report = _set_cuts_on_reals(bundle, cfg.reals, extra_extract, generate_cfg, analyze, reals_work,
                                          calibrate_report)
    windows = window_table(bundle, clips)
    consistency = _consistency(windows, models, bundle.names)
    table = bundle.score_table(windows)
    y = table["label"].to_numpy(np.float64)
    p = table["prob"].to_numpy()
    th = bundle.thresholds
    member_auc = {n: metrics.roc_auc(y, table[f"p_{n}"]) for n in bundle.names}
    floor = metrics.ece_if_calibrated(p, ece_bins)
    ens = {"auc": metrics.roc_auc(y, p), "ap": metrics.average_precision(y, p), "ece": metrics.ece(y, p, ece_bins),
           "ece_if_calibrated_median": floor["median"], "ece_if_calibrated_p90": floor["p90"],
           "brier": metrics.brier(y, p), **th.rates(p, y)}
    if bundle.disagreement is not None:  # UNCERTAIN by the members' disagreement, past the thresholds' share
        ens["disagreement_rate"] = float(np.mean(bundle.disagreement.flags(table[[f"p_{n}" for n in bundle.names]].to_numpy())
                                                 & (th.verdicts(p) != "UNCERTAIN")))
    cal_members = json.loads(Path(calibrate_report).read_text()).get("members", {}) if calibrate_report else {}
    rob = json.loads(Path(robustness).read_text()) if robustness else {}
    member_metrics = {n: {"test": {"auc": member_auc[n],
                                   **{k: v for k, v in cal_members.get(n, {}).get("test", {}).items() if k != "auc"},
                                   "target_auc": cal_members.get(n, {}).get("test", {}).get("auc")},
                          "consistency_max_abs_logit_diff": consistency[n]} for n in bundle.names}
    result: dict[str, Any] = {
        "ensemble": {"test": ens, "val": {k[4:]: v for k, v in th.to_dict().items() if k.startswith("val_")},
                     "per_method": _method_aucs(table, "prob")},
        "members": member_metrics}
    checks = quality_checks(ens, member_auc, rob.get("gate", {}), gate)
    result["checks"] = [{**asdict(c), "passed": c.passed} for c in checks]
    lineage = {"data_dvc_md5": data_hash(root), "dvc_lock": member_hashes(root, bundle.names)}
    splits = pd.read_csv(Path(features) / "index.csv")
    data = {"clips_by_split": {str(k): int(v) for k, v in splits["split"].value_counts().sort_index().items()}}
    if profile_summary is not None:
        result["profile"] = profile_summary
    if reals_report is not None:
        result["reals"] = reals_report
    first = first_windows(clips, bundle.contract, EXAMPLE_WINDOWS)
    example, _ = collate([first[i] for i in range(EXAMPLE_WINDOWS)])
    bundle.save(out, extra={"extract": extra_extract, "metrics": result,
                            "robustness": rob, "lineage": lineage, "data": data},
                onnx=cfg.onnx, onnx_tolerance=cfg.onnx_tolerance, example=example)
    reloaded = Bundle.load(out)  # checksums verified on the written files
    ref_logits = bundle.window_logits(example)
    got = reloaded.window_logits(example)
    result["reload_max_abs_logit_diff"] = max(float(np.max(np.abs(got[n] - ref_logits[n]))) for n in bundle.names)
    onnx_members = [m["name"] for m in reloaded.spec["members"] if m.get("onnx")]
    if onnx_members:
        via_onnx = Bundle.load(out, runtime="onnx").window_logits(example)
        result["onnx"] = {n: float(np.max(np.abs(via_onnx[n] - ref_logits[n]))) for n in onnx_members}
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "metrics.json").write_text(json.dumps(result, indent=1, default=json_default) + "\n")
    table.to_csv(reports / "scores.csv", index=False, float_format="%.6g")
    write_resolved(cfg, reports)
    _enforce_bounds(result, cfg)
    result["checks"] = checks
    return result


def _set_cuts_on_reals(bundle: Bundle, cfg: RealsConfig, extract: dict[str, Any], generate_cfg: GenerateConfig | None,
                       analyze: AnalyzeConfig | None, work: Path | None, calibrate_report: Path | None) -> dict[str, Any]:
    """Analyse the reals with ``bundle`` (written to a scratch folder for the analysis
    processes) and set its FAKE cuts on them (:func:`fit_on_reals`); the report."""
    import tempfile

    from veracity.stages.benchmark import analyse_clips

    if cfg.source == "synthetic" and (generate_cfg is None or work is None):
        raise StageError("ensemble.reals.source is synthetic: the generate section and a work folder are needed")
    scores = Path(calibrate_report).parent / "scores.csv" if calibrate_report is not None else None
    if scores is None or not scores.is_file():
        raise StageError(f"ensemble.reals needs calibrate's validation scores ({scores}); run calibrate first")
    val = pd.read_csv(scores)
    val = val[val["split"] == "val"]
    clips = reals_clips(cfg, generate_cfg or GenerateConfig(), Path(work or "."))
    with tempfile.TemporaryDirectory(prefix="veracity-reals-") as tmp:
        bundle.save(Path(tmp) / "bundle", extra={"extract": extract})
        rows = analyse_clips([(vid, str(Path(path).resolve()), None, tmp) for vid, path in clips], Path(tmp) / "bundle",
                             workers=cfg.workers, device="cpu", analyze=analyze or AnalyzeConfig())
    report = fit_on_reals(bundle, val, pd.DataFrame(rows))
    where = {"seed": cfg.seed, "n_identities": cfg.n_identities} if cfg.source == "synthetic" else {"folder": cfg.folder}
    return {"source": cfg.source, **where, **report}


def _enforce_bounds(result: dict[str, Any], cfg: EnsembleConfig) -> None:
    """Raise :class:`BoundError` naming every difference past its tolerance."""
    bad = [f"{name}: bundle vs training window logits differ by {m['consistency_max_abs_logit_diff']:.3g}"
           for name, m in result["members"].items() if not m["consistency_max_abs_logit_diff"] <= cfg.consistency_tolerance]
    if not result["reload_max_abs_logit_diff"] <= cfg.consistency_tolerance:
        bad.append(f"the bundle reloaded from disk differs from the one written by {result['reload_max_abs_logit_diff']:.3g}")
    bad += [f"{name}: ONNX vs PyTorch logits differ by {d:.3g} (ensemble.onnx_tolerance {cfg.onnx_tolerance:g})"
            for name, d in result.get("onnx", {}).items() if not d <= cfg.onnx_tolerance]
    if bad:
        raise BoundError(f"the bundle is not the model that was evaluated (ensemble.consistency_tolerance "
                         f"{cfg.consistency_tolerance:g}): " + "; ".join(bad))
