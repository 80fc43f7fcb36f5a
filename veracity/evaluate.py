"""Every member's held-out predictions into metrics, tables, plots (the ``evaluate`` stage's work;
:mod:`veracity.stages.evaluate` adds MLflow).

Reads ``<models>/<member>/predictions.csv`` (clip-level scores written by training) and
writes, under ``out``:

    metrics.json         per member: test metrics (AUC, AP, EER, FPR@95TPR, F1, ECE, Brier...)
                         at video level, AUC/AP/EER at window and frame level, plus the
                         quality checks below  (``dvc metrics show``)
    per_method.csv       AUC per manipulation method x member, test split
    table.csv            the full metrics table (split x method x member)
    plots/roc.csv, plots/pr.csv, plots/reliability.csv  long-format curve data, and
    plots/confusion.csv  one row per clip (actual, predicted)  for ``dvc plots show``
    *.png                the same as figures (ROC, PR, reliability diagram, confusion)

The ECE and reliability bins are the caller's (``metrics.ece_bins``), the same as the other
stages', so an ECE here compares with calibrate's and ensemble's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from veracity import metrics
from veracity.training import FRAME_PREDICTIONS, PREDICTIONS, WINDOW_PREDICTIONS


@dataclass(frozen=True)
class QualityCheck:
    """One quality figure the issue asks for, with its bound."""

    name: str
    value: float
    bound: float
    kind: str  # ">=" or "<="

    @property
    def passed(self) -> bool:
        return bool(self.value >= self.bound) if self.kind == ">=" else bool(self.value <= self.bound)


def load_predictions(models: Path, members: Sequence[str]) -> pd.DataFrame:
    """All members' predictions in one long table."""
    frames = []
    for m in members:
        path = Path(models) / m / PREDICTIONS
        if not path.exists():
            raise FileNotFoundError(f"no predictions for member {m!r} at {path} (train it first)")
        frames.append(pd.read_csv(path))
    return pd.concat(frames, ignore_index=True)


def _method_auc(df: pd.DataFrame, method: str) -> float:
    sel = df[(df.method == method) | (df.label == 0)]
    return metrics.roc_auc(sel["label"].to_numpy(), sel["prob"].to_numpy())


def quality_checks(test: pd.DataFrame, roles: dict[str, str]) -> list[QualityCheck]:
    """The quality bars of the detectors issue, for members named by role.

    Args:
        test: test-split predictions of all members.
        roles: role -> member name, roles among ``video``, ``audio``, ``fusion``, ``lipsync``.
    """
    by = {m: g for m, g in test.groupby("member")}
    checks = []
    aucs = {m: metrics.roc_auc(g["label"].to_numpy(), g["prob"].to_numpy()) for m, g in by.items()}
    if aucs:
        checks.append(QualityCheck("best_member_auc", max(aucs.values()), 0.95, ">="))
    sync = [roles[r] for r in ("lipsync", "fusion") if roles.get(r) in by]
    if sync:
        checks.append(QualityCheck("lipsync_family_auc_sync_or_fusion", max(_method_auc(by[m], "lipsync") for m in sync), 0.90, ">="))
    if roles.get("video") in by:
        checks.append(QualityCheck("lipsync_family_auc_video_only", _method_auc(by[roles["video"]], "lipsync"), 0.75, "<="))
    if roles.get("audio") in by:
        checks.append(QualityCheck("voice_family_auc_audio", _method_auc(by[roles["audio"]], "voice"), 0.90, ">="))
    return checks


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in d.items()}


def _plots(test: pd.DataFrame, out: Path, ece_bins: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    roc_rows, pr_rows, rel_rows, conf_rows = [], [], [], []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for member, g in test.groupby("member"):
        y, p = g["label"].to_numpy(), g["prob"].to_numpy()
        fpr, tpr, _ = metrics.roc_curve(y, p)
        prec, rec, _ = metrics.pr_curve(y, p)
        rel = metrics.reliability(y, p, ece_bins)
        roc_rows += [{"member": member, "fpr": float(a), "tpr": float(b)} for a, b in zip(fpr, tpr, strict=True)]
        pr_rows += [{"member": member, "recall": float(a), "precision": float(b)} for a, b in zip(rec, prec, strict=True)]
        rel_df = pd.DataFrame({k: rel[k] for k in ("mean_pred", "frac_pos", "count")})
        for r in rel_df.itertuples(index=False):
            rel_rows.append({"member": member, **r._asdict()})
        # One row per clip: DVC's confusion template counts rows itself.
        names = np.array(["real", "fake"])
        conf_rows += [{"member": member, "actual": a, "predicted": b}
                      for a, b in zip(names[y.astype(int)], names[(p >= 0.5).astype(int)], strict=True)]
        axes[0].plot(fpr, tpr, label=f"{member} (AUC {metrics.roc_auc(y, p):.3f})")
        axes[1].plot(rec, prec, label=member)
        ok = rel_df["count"] > 0
        axes[2].plot(rel_df.loc[ok, "mean_pred"], rel_df.loc[ok, "frac_pos"], "o-", label=member)
    axes[0].plot([0, 1], [0, 1], "k:", lw=0.8)
    axes[2].plot([0, 1], [0, 1], "k:", lw=0.8)
    for ax, (title, xl, yl) in zip(axes, [("ROC", "FPR", "TPR"), ("Precision-recall", "recall", "precision"),
                                          ("Reliability", "mean predicted P(fake)", "observed fake share")], strict=True):
        ax.set(title=title, xlabel=xl, ylabel=yl)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
    pd.DataFrame(roc_rows).to_csv(plots / "roc.csv", index=False)
    pd.DataFrame(pr_rows).to_csv(plots / "pr.csv", index=False)
    pd.DataFrame(rel_rows).to_csv(plots / "reliability.csv", index=False)
    pd.DataFrame(conf_rows).to_csv(plots / "confusion.csv", index=False)


def evaluate(models: Path, members: Sequence[str], out: Path, roles: dict[str, str] | None = None, *,
             ece_bins: int) -> dict[str, Any]:
    """Metrics, tables and plots for every member's test predictions.

    Args:
        models: directory with one folder per trained member.
        members: the members to evaluate.
        out: directory for ``metrics.json``, the tables and the plots.
        roles: role -> member, for the quality checks (see :func:`quality_checks`).
        ece_bins: bins of every ECE and of the reliability diagram (``metrics.ece_bins``).

    Returns:
        ``summary`` (as in ``metrics.json``), ``per_method`` (a table) and ``checks``.

    Raises:
        FileNotFoundError: a member has no predictions.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    preds = load_predictions(models, members)
    tables = []
    for member, g in preds.groupby("member"):
        t = metrics.table(g, score_col="prob", label_col="label", by=("split", "method"), n_bins=ece_bins)
        t.insert(0, "member", member)
        tables.append(t)
    table = pd.concat(tables, ignore_index=True)
    table.to_csv(out / "table.csv", index=False)
    test = preds[preds.split == "test"]
    per_method = (table[(table.split == "test") & (table.method != "real")]
                  .pivot(index="method", columns="member", values="auc").round(4))
    per_method.to_csv(out / "per_method.csv")
    summary: dict[str, Any] = {"members": {}}
    for member, g in test.groupby("member"):
        s = metrics.summarize(g["label"].to_numpy(), g["prob"].to_numpy(), n_bins=ece_bins)
        summary["members"][member] = _clean(s)
        levels = {}
        for level, name in (("window", WINDOW_PREDICTIONS), ("frame", FRAME_PREDICTIONS)):
            path = Path(models) / member / name
            if not path.exists():
                continue
            d = pd.read_csv(path)
            d = d[d.split == "test"]
            if len(d):
                s = metrics.summarize(d["label"].to_numpy(), d["prob"].to_numpy(), n_bins=ece_bins)
                levels[level] = _clean({k: s[k] for k in ("auc", "ap", "eer", "fpr_at_95tpr", "n") if k in s})
        if levels:
            summary["members"][member]["levels"] = levels
    checks = quality_checks(test, roles or {})
    summary["quality"] = {c.name: {"value": round(c.value, 4), "bound": c.bound, "kind": c.kind, "passed": c.passed}
                          for c in checks}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    _plots(test, out, ece_bins)
    return {"summary": summary, "per_method": per_method, "checks": checks}
