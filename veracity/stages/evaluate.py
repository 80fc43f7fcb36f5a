"""The ``evaluate`` stage: every member on the held-out split, its tables, plots and MLflow run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from veracity import evaluate as ev
from veracity.config import EvaluateConfig, TrainConfig
from veracity.stages import StageError
from veracity.tracking import start_run


def evaluate(cfg: EvaluateConfig, train_cfg: TrainConfig, models: Path, out: Path, *, ece_bins: int, root: Path,
             mlflow: bool = True) -> dict[str, Any]:
    """Metrics, per-method table and plots of every trained member (``train.members``).

    Args:
        cfg: the ``evaluate`` section (which member plays which role in the checks).
        train_cfg: the ``train`` section (the members).
        models: directory with one folder per trained member.
        out: directory for ``metrics.json``, ``per_method.csv``, ``table.csv`` and plots.
        ece_bins: bins of the ECE (``metrics.ece_bins``).
        root: repository root (MLflow store and lineage tags).
        mlflow: log the evaluation to MLflow.

    Returns:
        ``summary`` (as in ``metrics.json``), ``per_method`` (a table) and ``checks``.

    Raises:
        StageError: no members, or a member without predictions.
    """
    members = sorted(train_cfg.members)
    if not members:
        raise StageError("train.members is empty: nothing to evaluate")
    try:
        res = ev.evaluate(models, members, out, dict(cfg.roles), ece_bins=ece_bins)
    except FileNotFoundError as exc:
        raise StageError(str(exc)) from None
    if mlflow:
        with start_run("evaluate", root, tags={"stage": "evaluate"}) as tracker:
            for member, vals in res["summary"]["members"].items():
                tracker.log_metrics({f"{member}.{k}": v for k, v in vals.items() if v is not None})
            tracker.log_artifact(out, "evaluate")
    return res
