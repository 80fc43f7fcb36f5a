"""The ``train`` stage: one ensemble member, its metrics file and its MLflow run.

Wraps :func:`veracity.training.train` (the training loop) with what makes it a stage:
the member looked up in ``train.members``, the MLflow run (params, metrics, artifacts,
tagged with the commit and data hash of ``root``) and the metrics JSON that DVC reads.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path

from veracity import training
from veracity.config import TrainConfig, to_plain
from veracity.contract import CONTRACT_NAME
from veracity.lineage import json_default
from veracity.models.checkpoint import MODEL_META, MODEL_WEIGHTS, PREDICTIONS
from veracity.stages import StageError
from veracity.tracking import start_run


def train(member: str, cfg: TrainConfig, features: Path, out: Path, *, usable_statuses: Sequence[str],
          ece_bins: int, members_dir: Path, root: Path, metrics: Path | None = None, resume: bool = False,
          mlflow: bool = True) -> training.TrainResult:
    """Train ``member`` on the features and write ``out`` (weights, ``model.json``, predictions).

    Args:
        member: a key of ``cfg.members``.
        cfg: the ``train`` section (``debug`` set for a 1-epoch, 4-clip check).
        features: the extracted features directory.
        out: the member's output directory.
        usable_statuses: extraction statuses of clips to train on (``extract.usable_statuses``).
        ece_bins: bins of the ECE in the reports (``metrics.ece_bins``).
        members_dir: where trained members live (for ``init_from`` warm starts).
        root: repository root (MLflow store and lineage tags).
        metrics: also write the member's metrics JSON here (the DVC metrics file).
        resume: continue from the last checkpoint in ``out``.
        mlflow: log the run to MLflow.

    Raises:
        StageError: unknown member.
    """
    if member not in cfg.members:
        raise StageError(f"unknown member {member!r}; train.members has {sorted(cfg.members)}")
    mcfg = cfg.members[member]
    out = Path(out)
    run = start_run(f"train-{member}", root, tags={"stage": "train", "member": member}) if mlflow \
        else contextlib.nullcontext()
    with run as tracker:
        if tracker is not None:
            tracker.log_params({"member": to_plain(mcfg), "train": to_plain(cfg, exclude={"members"}),
                                "contract": json.loads((Path(features) / CONTRACT_NAME).read_text())})
        result = training.train(member, mcfg, cfg, features, out, resume=resume, tracker=tracker,
                                members_dir=members_dir, usable_statuses=usable_statuses, ece_bins=ece_bins)
        if tracker is not None:
            tracker.log_metrics({f"test_{k}": v for k, v in result.test.items()})
            tracker.log_metrics({"best_val_auc": result.best_val_auc, "train_seconds": result.seconds})
            for name in (MODEL_META, MODEL_WEIGHTS, PREDICTIONS):
                tracker.log_artifact(out / name, "model")
    if metrics is not None:
        # No wall time: the metrics file is a DVC output, and the same data and seed must
        # give the same bytes (train_seconds is in MLflow).
        report = {"member": member, "best_epoch": result.best_epoch, "best_val_auc": result.best_val_auc,
                  **{f"test_{k}": v for k, v in result.test.items()}}
        metrics.parent.mkdir(parents=True, exist_ok=True)
        metrics.write_text(json.dumps(report, indent=2, sort_keys=True, default=json_default))
    return result
