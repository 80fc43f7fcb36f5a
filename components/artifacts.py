"""What the Kubeflow components share inside a task: typed config from the sections a task is
given, KFP artifacts laid out as the stage functions expect them, and figures as artifact
metadata.

A component receives ``params.yaml`` sections as JSON (pipeline parameters, so a task's
cache key is the sections it reads) and artifacts as separate folders; a stage
function takes typed config and a project-like layout (``models/<member>``). This module
turns one into the other, and nothing here computes what a stage computes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from veracity.config import Params
from veracity.lineage import sha256_file
from veracity.models.checkpoint import MODEL_META, MODEL_WEIGHTS

MANIFEST = Path("manifest") / "manifest.csv"  # inside the corpus artifact, beside raw/
RAW = "raw"


def params(**sections: str | Mapping[str, Any]) -> Params:
    """The typed config of the given ``params.yaml`` sections, each a mapping or its JSON
    (the pipeline's parameters); the other sections at their defaults.

    Raises:
        ConfigError: a section breaks its schema (as ``veracity <verb>`` would say).
    """
    from pydantic import ValidationError

    from veracity.config import ConfigError, _format_errors

    try:
        return Params.model_validate({k: json.loads(v) if isinstance(v, str) else v for k, v in sections.items()})
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, "pipeline parameters")) from None


def use_mlflow(uri: str) -> bool:
    """Point MLflow at ``uri`` for this task; False when none is given (the task logs nothing)."""
    if uri:
        os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return bool(uri)


def scratch() -> Path:
    """An empty folder standing in for the repository root (a task has no ``data.dvc``, ``dvc.lock``)."""
    return Path(tempfile.mkdtemp(prefix="veracity-task-"))


def members_dir(*groups: Iterable[Any]) -> Path:
    """A ``models``-like folder holding each member artifact under its member's name.

    Members are named by their ``model.json``, so what a task is handed, not the order
    ``dsl.Collected`` happens to give, decides which folder is which.
    """
    root = scratch()
    for artifact in (a for group in groups for a in group):
        src = Path(artifact.path)
        name = json.loads((src / MODEL_META).read_text())["member"]
        (root / name).symlink_to(src.resolve(), target_is_directory=True)
    return root


def merge_trees(sources: Iterable[Path], dest: Path) -> Path:
    """Copy folders into one (later files replace earlier ones of the same name)."""
    dest.mkdir(parents=True, exist_ok=True)
    for src in sources:
        shutil.copytree(src, dest, dirs_exist_ok=True)
    return dest


def flat_figures(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Finite numbers of a nested report as dotted keys (KFP ``Metrics`` take scalars only)."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_figures(value, f"{name}."))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int | float) and math.isfinite(value):
            out[name] = float(value)
    return out


def log_figures(artifact: Any, report: Mapping[str, Any], keep: Iterable[str] | None = None) -> None:
    """Log a report's numbers on a ``Metrics`` artifact (only the top-level ``keep`` sections when given)."""
    wanted = set(keep) if keep is not None else None
    for name, value in flat_figures(report).items():
        if wanted is None or name.split(".", 1)[0] in wanted:
            artifact.log_metric(name, value)
    write_metadata(artifact)


def write_metadata(artifact: Any) -> None:
    """Also write a metrics artifact's figures to its file: KFP's local cache treats an
    artifact without a file as missing and reruns the task every time."""
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(json.dumps(artifact.metadata, indent=1, sort_keys=True))


def describe(artifact: Any, **facts: Any) -> None:
    """Put facts (data contract, sha256, versions) on an artifact's metadata."""
    artifact.metadata.update({k: v for k, v in facts.items() if v is not None})


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file, as artifact metadata states it."""
    return f"sha256:{sha256_file(path)}"


def markdown_page(markdown: str, title: str) -> str:
    """A Markdown document as a standalone HTML page (KFP's UI shows ``HTML`` artifacts inline)."""
    import html

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown)
    return f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>" \
           f"<body>{body}</body></html>\n"


def log_benchmark_classification(artifact: Any, scores_csv: Path) -> None:
    """ROC and confusion matrix of the ensemble on the benchmark's clean clips.

    The confusion matrix counts a FAKE verdict as "fake" and any other judged verdict as
    "real"; abstentions are left out, as the benchmark's own figures leave them out.
    """
    import numpy as np
    import pandas as pd

    from veracity import metrics
    from veracity.stages.benchmark import ABSTAIN, CLEAN

    table = pd.read_csv(scores_csv)
    judged = table[(table["condition"] == CLEAN) & (table["verdict"] != ABSTAIN)]
    y = judged["label"].to_numpy(np.int64)
    fpr, tpr, thr = metrics.roc_curve(y, judged["probability"].to_numpy(np.float64))
    # KFP's viewer wants finite thresholds; the first point's is +inf by construction.
    thr = np.where(np.isfinite(thr), thr, 1.0)
    artifact.log_roc_curve(fpr.tolist(), tpr.tolist(), thr.tolist())
    fake = (judged["verdict"] == "FAKE").to_numpy()
    matrix = [[int(((y == a) & (fake == bool(p))).sum()) for p in (0, 1)] for a in (0, 1)]
    artifact.log_confusion_matrix(["real", "fake"], matrix)
    write_metadata(artifact)


def train(member: str, features: Any, sources: Path, sections: Mapping[str, Any], mlflow_uri: str,
          model: Any, summary: Any) -> None:
    """The ``train`` stage for one member artifact; ``sources`` holds the members it may start from."""
    from veracity.stages.train import train as run

    cfg, report = params(**sections), scratch() / "metrics.json"
    run(member, cfg.train, Path(features.path), Path(model.path), usable_statuses=cfg.extract.usable_statuses,
        ece_bins=cfg.metrics.ece_bins, members_dir=sources, root=scratch(), metrics=report,
        mlflow=use_mlflow(mlflow_uri))
    log_figures(summary, json.loads(report.read_text()))
    meta = json.loads((Path(model.path) / MODEL_META).read_text())
    describe(model, member=member, detector=meta["detector"], contract=meta["contract"],
             weights_sha256=file_digest(Path(model.path) / MODEL_WEIGHTS))
