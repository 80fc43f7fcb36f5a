"""The ``calibrate`` stage: everything that is fitted on validation scores.

Per member: a window-to-video pooling rule and a calibrator (:mod:`veracity.calibration`);
then the fusion rule over the members' calibrated probabilities and the REAL /
UNCERTAIN / FAKE thresholds (:mod:`veracity.decision`), the same thresholds for each
modality judged alone (``modality_thresholds``: a batch of still frames, and a file without
usable audio, are judged by the video members only), and the bound past which split
members make the call ``UNCERTAIN`` (:class:`~veracity.decision.Disagreement`), and a
fusion with thresholds of its own for each smaller set of members that takes over when the
others give no answer at serving time (:class:`~veracity.decision.Fallback`). Writes ``calibration.json``
(plain JSON, read by ``attack`` and ``ensemble``), its resolved config, and the reports:
ECE and Brier before and after per member, every fusion rule on validation and test, the
ECE a perfectly calibrated model would show on this many clips, reliability rows and the
scores table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from veracity import metrics
from veracity.calibration import (
    Pooling,
    calibration_report,
    fit_calibrator,
    reliability_rows,
    sigmoid,
    target_mask,
)
from veracity.config import CalibrateConfig, MemberConfig, PoolingConfig, write_resolved
from veracity.decision import (
    FUSION_RULES,
    Fallback,
    Thresholds,
    fallback_subsets,
    fit_disagreement,
    fit_fusion,
    fit_thresholds,
)
from veracity.lineage import json_default
from veracity.models import detector_info
from veracity.models.checkpoint import WINDOW_PREDICTIONS
from veracity.stages import StageError

CALIBRATION_JSON = "calibration.json"

SCORE_COLUMNS = ["video_id", "split", "method", "label", "video_label", "audio_label"]


def read_window_logits(models: Path | str, name: str) -> pd.DataFrame:
    """One member's window logits on val and test (``predictions_window.csv``)."""
    path = Path(models) / name / WINDOW_PREDICTIONS
    if not path.is_file():
        raise StageError(f"member {name!r} has no window predictions at {path}; train it first")
    return pd.read_csv(path)


def calibrate(cfg: CalibrateConfig, members: Mapping[str, MemberConfig], models: Path, out: Path,
              reports: Path, *, ece_bins: int) -> dict[str, Any]:
    """The ``calibrate`` stage: everything fitted on validation scores.

    Per member: pool windows to videos with the configured rule, fit the calibrator on
    validation clips of the member's own target (reals + its target methods), report ECE
    and Brier before and after on validation and test. Then fit the fusion rule on the
    members' calibrated validation probabilities and the REAL/UNCERTAIN/FAKE thresholds on
    the fused validation probabilities. Finally, for each modality with members, thresholds
    with the same targets on that modality alone (:func:`modality_thresholds`), stored as
    ``modality_thresholds`` and reported under ``modalities``, and the fallbacks for smaller
    member sets (:func:`fit_fallbacks`), stored and reported as ``fallbacks``.

    Args:
        cfg: the ``calibrate`` section.
        members: ``train.members`` (target and target methods of each member).
        models: directory with one folder per trained member.
        out: directory for ``calibration.json`` and its resolved config.
        reports: directory for ``metrics.json``, ``reliability.csv`` and ``scores.csv``.
        ece_bins: bins of every ECE and reliability table (``metrics.ece_bins``).

    Returns:
        The metrics written to ``reports/metrics.json``.

    Raises:
        StageError: ``calibrate.fusion.members`` names an untrained member, a member has
            no window predictions, or the video members' validation clips lack reals or fakes.
    """
    out, reports = Path(out), Path(reports)
    names = list(cfg.fusion.members) or sorted(members)
    unknown = [n for n in names if n not in members]
    if unknown:
        raise StageError(f"calibrate.fusion.members names untrained members {unknown}; train.members has {sorted(members)}")
    spec: dict[str, Any] = {"members": {}}
    report: dict[str, Any] = {"members": {}}
    rel_rows: list[dict[str, Any]] = []
    table: pd.DataFrame | None = None
    alone: dict[str, pd.DataFrame] = {}  # per member: its calibrated probability against its own target
    for name in names:
        mcfg = members[name]
        pcfg = cfg.pooling.get(name)
        pooling = Pooling.from_config(pcfg or PoolingConfig())
        wins = read_window_logits(models, name)
        v = member_video_logits_from(wins, pooling)
        target = mcfg.target
        tm = tuple(mcfg.target_methods) if mcfg.target_methods is not None else None
        keep = target_mask(v["method"], tm) & v[target].notna().to_numpy()
        val, test = (v["split"] == "val").to_numpy() & keep, (v["split"] == "test").to_numpy() & keep
        y = v[target].to_numpy(np.float64)
        cal, cv = fit_calibrator(v["z"].to_numpy()[val], y[val], cfg.method, cfg.folds,
                                 isotonic_min_clips=cfg.isotonic_min_clips)
        p = cal.prob(v["z"].to_numpy())
        raw = sigmoid(v["z"].to_numpy())
        # Which pooling rule would have ranked validation best (for choosing it in params).
        pool_auc = {}
        for how in metrics.POOL_RULES:
            alt = Pooling(how, pooling.k, pooling.beta)
            a = member_video_logits_from(wins, alt)
            akeep = target_mask(a["method"], tm) & a[target].notna().to_numpy() & (a["split"] == "val").to_numpy()
            pool_auc[how] = metrics.roc_auc(a[target][akeep], a["z"][akeep])
        report["members"][name] = {
            "target": target, "pooling": pooling.to_dict(), "method": cal.method,
            "temperature": cal.temperature if cal.method == "temperature" else None, "cv_log_loss": cv,
            "val_auc_by_pooling": pool_auc,
            "val": {**calibration_report(y[val], raw[val], p[val], ece_bins), "auc": metrics.roc_auc(y[val], p[val])},
            "test": {**calibration_report(y[test], raw[test], p[test], ece_bins),
                     "auc": metrics.roc_auc(y[test], v["z"].to_numpy()[test])},
        }
        for stage, probs in (("before", raw), ("after", p)):
            rel_rows += reliability_rows(name, "test", y[test], probs[test], ece_bins, stage)
        spec["members"][name] = {"pooling": pooling.to_dict(), "calibrator": cal.to_dict(), "target": target,
                                 "target_methods": list(tm) if tm is not None else None}
        alone[name] = pd.DataFrame({"video_id": v["video_id"], "split": v["split"], "p": p, "y": y, "keep": keep})
        cols = v[SCORE_COLUMNS].copy()
        cols[f"p_{name}"] = p
        table = cols if table is None else table.merge(cols[["video_id", f"p_{name}"]], on="video_id", how="inner")
    assert table is not None
    table = table.sort_values("video_id").reset_index(drop=True)
    pcols = [f"p_{n}" for n in names]
    is_val, is_test = (table["split"] == "val").to_numpy(), (table["split"] == "test").to_numpy()
    y = table["label"].to_numpy(np.float64)
    fusion = fit_fusion(table.loc[is_val, pcols].to_numpy(), y[is_val], names, cfg.fusion.rule,
                        cfg.fusion.weights, cfg.fusion.stacking_l2, cfg.method, cfg.folds, cfg.isotonic_min_clips)
    table["prob"] = fusion.prob(table[pcols].to_numpy())
    th = fit_thresholds(table.loc[is_val, "prob"].to_numpy(), y[is_val], cfg.thresholds.target_fpr,
                        cfg.thresholds.target_uncertain)
    table["verdict"] = th.verdicts(table["prob"].to_numpy())
    rules = {}
    for rule in FUSION_RULES:
        f = fusion if rule == fusion.rule else fit_fusion(
            table.loc[is_val, pcols].to_numpy(), y[is_val], names, rule, cfg.fusion.weights,
            cfg.fusion.stacking_l2, cfg.method, cfg.folds, cfg.isotonic_min_clips)
        pr = f.prob(table[pcols].to_numpy())
        rules[rule] = {"val_auc": metrics.roc_auc(y[is_val], pr[is_val]), "test_auc": metrics.roc_auc(y[is_test], pr[is_test]),
                       "test_ece": metrics.ece(y[is_test], pr[is_test], ece_bins)}
    fused_p = table["prob"].to_numpy()
    report["ensemble"] = {
        "rule": fusion.rule, "rules": rules,
        "val": {"auc": metrics.roc_auc(y[is_val], fused_p[is_val]), "ece": metrics.ece(y[is_val], fused_p[is_val], ece_bins),
                "brier": metrics.brier(y[is_val], fused_p[is_val]), **th.rates(fused_p[is_val], y[is_val])},
        "test": {"auc": metrics.roc_auc(y[is_test], fused_p[is_test]),
                 "ece": metrics.ece(y[is_test], fused_p[is_test], ece_bins),
                 **{f"ece_if_calibrated_{k}": v for k, v in metrics.ece_if_calibrated(fused_p[is_test], ece_bins).items()},
                 "brier": metrics.brier(y[is_test], fused_p[is_test]), **th.rates(fused_p[is_test], y[is_test])},
        "thresholds": th.to_dict(),
    }
    rel_rows += reliability_rows("ensemble", "test", y[is_test], fused_p[is_test], ece_bins, "after")
    modalities = {n: detector_info(members[n].detector)["modality"] for n in names}
    mod_th, report["modalities"] = modality_thresholds(alone, modalities, cfg.thresholds.target_fpr,
                                                       cfg.thresholds.target_uncertain)
    spec.update(fusion=fusion.to_dict(), thresholds=th.to_dict(),
                modality_thresholds={k: t.to_dict() for k, t in mod_th.items()})
    fallbacks = fit_fallbacks(table, modalities, cfg, is_val)
    if fallbacks:
        spec["fallbacks"] = [f.to_dict() for f in fallbacks]
        report["fallbacks"] = {}
        for f in fallbacks:
            pr = f.fusion.prob(table[[f"p_{n}" for n in f.members]].to_numpy())
            report["fallbacks"]["+".join(f.members)] = {"members": list(f.members), **{
                split: {"auc": metrics.roc_auc(y[rows], pr[rows]), "ece": metrics.ece(y[rows], pr[rows], ece_bins),
                        **f.thresholds.rates(pr[rows], y[rows])} for split, rows in (("val", is_val), ("test", is_test))}}
    dcfg = cfg.disagreement
    if dcfg.enabled and len(names) > 1:
        dis = fit_disagreement(table.loc[is_val, pcols].to_numpy(), names, dcfg.k, dcfg.rate, dcfg.clip)
        flagged = dis.flags(table[pcols].to_numpy())
        table["disagreement"] = dis.distance(table[pcols].to_numpy())
        table.loc[flagged, "verdict"] = "UNCERTAIN"
        report["disagreement"] = {
            "k": dis.k, "rate": dis.rate, "bound": dis.bound,
            # Validation is where the bound was set: its share is at most the rate by construction.
            "val_flagged": float(flagged[is_val].mean()), "test_flagged": float(flagged[is_test].mean()),
            "test_flagged_real": int((flagged & is_test & (y == 0)).sum()),
            "test_flagged_fake": int((flagged & is_test & (y == 1)).sum())}
        spec["disagreement"] = dis.to_dict()
    out.mkdir(parents=True, exist_ok=True)
    reports.mkdir(parents=True, exist_ok=True)
    (out / CALIBRATION_JSON).write_text(json.dumps(spec, indent=1) + "\n")
    write_resolved(cfg, out)
    (reports / "metrics.json").write_text(json.dumps(report, indent=1, default=json_default) + "\n")
    pd.DataFrame(rel_rows).to_csv(reports / "reliability.csv", index=False, float_format="%.6g")
    table.to_csv(reports / "scores.csv", index=False, float_format="%.6g")
    return report


def fit_fallbacks(table: pd.DataFrame, modalities: Mapping[str, str], cfg: CalibrateConfig,
                  is_val: np.ndarray) -> list[Fallback]:
    """A fusion and thresholds for each member set of :func:`~veracity.decision.fallback_subsets`,
    fitted on the validation rows of ``table`` (columns ``p_<member>``, ``label``) exactly as
    the full fusion and its thresholds are: same rule, same targets."""
    y = table["label"].to_numpy(np.float64)[is_val]
    out = []
    for subset in fallback_subsets(modalities):
        probs = table.loc[is_val, [f"p_{n}" for n in subset]].to_numpy()
        fusion = fit_fusion(probs, y, subset, cfg.fusion.rule, cfg.fusion.weights, cfg.fusion.stacking_l2,
                            cfg.method, cfg.folds, cfg.isotonic_min_clips)
        th = fit_thresholds(fusion.prob(probs), y, cfg.thresholds.target_fpr, cfg.thresholds.target_uncertain)
        out.append(Fallback(fusion, th))
    return out


def modality_thresholds(alone: Mapping[str, pd.DataFrame], modalities: Mapping[str, str], target_fpr: float,
                        target_uncertain: float, required: tuple[str, ...] = ("video",),
                        ) -> tuple[dict[str, Thresholds], dict[str, Any]]:
    """REAL/UNCERTAIN/FAKE thresholds for each modality judged alone, fitted on validation.

    A clip's score for a modality is the highest calibrated probability among that
    modality's members (the rule of :func:`veracity.decision.modality_scores`); it is judged
    against the target label of the member that gave it, and counts only where that member
    speaks about it (reals and its target methods, a known label). The targets are the
    fused thresholds' (``calibrate.thresholds``).

    Args:
        alone: per member, one row per clip: ``video_id``, ``split``, ``p`` (calibrated),
            ``y`` (its target label) and ``keep`` (the member speaks about the clip).
        modalities: member -> modality.
        target_fpr: share of real clips called FAKE.
        target_uncertain: share of clips marked UNCERTAIN.
        required: modalities that must get thresholds (``video``: frame batches are judged
            on it); another modality whose validation clips cannot fit them is reported
            with the reason and left without.

    Returns:
        ``(thresholds by modality, report by modality)``; the report holds the members, the
        thresholds and their rates on validation and test.

    Raises:
        StageError: a required modality's validation clips lack reals or fakes.
    """
    thresholds: dict[str, Thresholds] = {}
    report: dict[str, Any] = {}
    for mod in sorted(set(modalities.values())):
        names = [n for n in alone if modalities[n] == mod]
        wide = None
        for n in names:
            cols = alone[n].rename(columns={c: f"{c}_{n}" for c in ("p", "y", "keep")})
            wide = cols if wide is None else wide.merge(cols.drop(columns="split"), on="video_id", how="inner")
        assert wide is not None
        wide = wide.sort_values("video_id").reset_index(drop=True)
        best = wide[[f"p_{n}" for n in names]].to_numpy(np.float64).argmax(axis=1)
        rows = np.arange(len(wide))
        p = wide[[f"p_{n}" for n in names]].to_numpy(np.float64)[rows, best]
        y = wide[[f"y_{n}" for n in names]].to_numpy(np.float64)[rows, best]
        keep = wide[[f"keep_{n}" for n in names]].to_numpy(bool)[rows, best] & ~np.isnan(y)
        val, test = keep & (wide["split"] == "val").to_numpy(), keep & (wide["split"] == "test").to_numpy()
        try:
            th = fit_thresholds(p[val], y[val], target_fpr, target_uncertain)
        except ValueError as exc:
            message = f"cannot fit {mod}-only thresholds on validation (members {names}): {exc}"
            if mod in required:
                raise StageError(message) from None
            report[mod] = {"members": names, "thresholds": None, "error": message}
            continue
        thresholds[mod] = th
        report[mod] = {"members": names, "thresholds": th.to_dict(), "val": th.rates(p[val], y[val]),
                       "test": th.rates(p[test], y[test])}
    return thresholds, report


def member_video_logits_from(windows: pd.DataFrame, pooling: Pooling) -> pd.DataFrame:
    """:func:`member_video_logits` for an already loaded window table."""
    ids, z = pooling.apply(windows["logit"].to_numpy(np.float64), windows["video_id"].to_numpy())
    info = windows[SCORE_COLUMNS].drop_duplicates("video_id").set_index("video_id").loc[ids].reset_index()
    info["z"] = z
    return info
