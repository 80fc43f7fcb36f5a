"""MLflow tracking: one run per training or evaluation, with lineage tags.

The default backend is a SQLite database under the project (``mlflow.db``), a real MLflow
backend store; ``MLFLOW_TRACKING_URI`` points runs at a server instead. Every run is
tagged with the git commit and the DVC hash of the raw corpus (``data.dvc``) of the
repository root it is given. Registration in the model registry is the ``register``
stage's (:mod:`veracity.stages.register`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from veracity.lineage import data_hash, git_commit

EXPERIMENT = "veracity"


def tracking_uri(root: Path | str) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's SQLite store."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path(root) / 'mlflow.db').resolve()}"


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: value}


class Tracker:
    """A thin wrapper over an active MLflow run (so callers never import mlflow)."""

    def __init__(self, mlflow_module: Any, run: Any):
        self._mlflow = mlflow_module
        self.run = run
        self.run_id = run.info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        """Log nested params flattened to dotted keys (values as strings, MLflow's limit)."""
        flat = {k: str(v)[:6000] for k, v in _flat("", params).items()}
        items = list(flat.items())
        for i in range(0, len(items), 100):
            self._mlflow.log_params(dict(items[i : i + 100]))

    def log_metrics(self, values: dict[str, float], step: int | None = None) -> None:
        """Log finite numeric metrics."""
        clean = {k: float(v) for k, v in values.items() if isinstance(v, int | float) and v == v}
        if clean:
            self._mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        """Log a file or a directory's files."""
        path = Path(path)
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path)
        elif path.exists():
            self._mlflow.log_artifact(str(path), artifact_path)

    def log_dict(self, data: dict[str, Any], name: str) -> None:
        """Log a dict as a JSON artifact."""
        self._mlflow.log_dict(data, name)


@contextmanager
def start_run(run_name: str, root: Path | str, tags: dict[str, str] | None = None,
              experiment: str = EXPERIMENT) -> Iterator[Tracker]:
    """Open an MLflow run in the project's store, tagged with git commit and data hash."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    root = Path(root)
    # MLflow 3 exports the URI given to set_tracking_uri to the environment; note what the
    # user set, and put it back afterwards so a later run with another root is not misled.
    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        mlflow.set_tracking_uri(tracking_uri(root))
        if mlflow.get_experiment_by_name(experiment) is None:
            location = None if user_uri else (root / "mlartifacts").resolve().as_uri()
            mlflow.create_experiment(experiment, artifact_location=location)
        mlflow.set_experiment(experiment)
        all_tags = {"git_commit": git_commit(root) or "unknown", "data_dvc_md5": data_hash(root) or "unknown"}
        all_tags.update(tags or {})
        with mlflow.start_run(run_name=run_name, tags=all_tags) as run:
            yield Tracker(mlflow, run)
    finally:
        if user_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = user_uri
