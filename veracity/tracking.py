"""MLflow tracking: one run per training or evaluation, with lineage tags.

The default backend is a SQLite database under the project (``mlflow.db``), a real MLflow
backend store; ``MLFLOW_TRACKING_URI`` points runs at a server instead. Every run is
tagged with the git commit and the DVC hash of the raw corpus (``data.dvc``) of the
repository root it is given. Registration in the model registry is the ``register``
stage's (:mod:`veracity.stages.register`); :func:`resolve_bundle` turns a registry URI
(``models:/veracity-detector@champion``) back into a local bundle for the service.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


@dataclass(frozen=True)
class RegisteredBundle:
    """A bundle resolved from the model registry: where it lies and which version it is."""

    path: Path
    uri: str
    name: str
    version: str
    alias: str | None
    run_id: str | None


class RegistryError(RuntimeError):
    """The model URI cannot be resolved (no such model, version or alias; store unreachable)."""


_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


def resolve_bundle(uri: str, root: Path | str, cache: Path | str) -> RegisteredBundle:
    """Resolve ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` to a local bundle.

    The version's artifacts are downloaded once into ``cache/<name>/<version>`` (a version's
    files never change in the registry, so a finished download is reused); the bundle is
    the pyfunc model's ``bundle`` artifact, which the ``register`` stage logged. The caller
    verifies the bundle's checksums when it loads it.

    Raises:
        RegistryError: malformed URI, unknown model, version or alias, or a registered
            model without a bundle artifact.
    """
    m = _MODEL_URI.match(uri.strip())
    if m is None:
        raise RegistryError(f"model URI {uri!r} is not models:/<name>@<alias> or models:/<name>/<version>")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, alias = m.group("name"), m.group("alias")
    client = MlflowClient(tracking_uri=tracking_uri(root), registry_uri=tracking_uri(root))
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, m.group("version"))
    except MlflowException as exc:
        what = f"alias {alias!r}" if alias else f"version {m.group('version')}"
        raise RegistryError(f"no {what} of model {name!r} in {tracking_uri(root)}: "
                            f"{str(exc).splitlines()[0][:200]}") from None
    version = str(mv.version)
    dest = Path(cache) / name / version
    done = dest / ".complete"
    if not done.is_file():
        tmp = Path(cache) / name / f".{version}.partial-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            mlflow.set_tracking_uri(tracking_uri(root))
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp))
        except MlflowException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RegistryError(f"cannot download {name} version {version}: {str(exc).splitlines()[0][:200]}") from None
        (tmp / ".complete").write_text(version + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    bundles = [p.parent for p in dest.rglob("bundle.json")]
    if len(bundles) != 1:
        raise RegistryError(f"{name} version {version} holds {len(bundles)} bundles (bundle.json files); expected one")
    return RegisteredBundle(path=bundles[0], uri=uri, name=name, version=version, alias=alias, run_id=mv.run_id)
