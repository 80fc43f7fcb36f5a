"""Running the training pipeline: here with KFP's local runner, or on a Kubeflow Pipelines host.

:func:`run_local` runs every task as a subprocess of this Python environment (KFP's
``SubprocessRunner(use_venv=False)``: nothing is installed), its artifacts under a
local pipeline root. :func:`submit` sends a compiled package to a cluster, whose tasks
run in the project's image and write their artifacts under a pipeline root on object
storage.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pipelines.training import NAME, SHARDS, build
from veracity.config import Params
from veracity.stages import StageError

# Where a cluster's pipeline root may live: buckets KFP's launcher reads and writes.
OBJECT_STORES = ("s3", "gs", "minio", "az", "abfs")
CONNECT_TIMEOUT_S = 10.0
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class PipelineError(StageError):
    """The pipeline could not run or be submitted; the message says which part and why."""


@dataclass(frozen=True)
class LocalRun:
    """A finished local run: its folder under the pipeline root, and how long it took."""

    root: Path
    seconds: float

    def output(self, task: str, name: str) -> Path:
        """The path of output ``name`` of ``task`` (one task of that name, outside any loop).

        Raises:
            PipelineError: no such output in this run.
        """
        found = sorted(self.root.glob(f"{task}/{name}"))
        if not found:
            raise PipelineError(f"the run at {self.root} has no output {name!r} of task {task!r}")
        return found[0]

    def tasks(self) -> set[str]:
        """Names of the tasks that wrote outputs (a loop's tasks carry their iteration)."""
        return {p.name for p in self.root.iterdir() if p.is_dir()}


def run_local(params: Params, corpus_uri: str, pipeline_root: Path, *, mlflow_uri: str = "",
              shards: int = SHARDS, caching: bool = False) -> LocalRun:
    """Run the pipeline with KFP's local subprocess runner in this environment.

    Args:
        params: the config (its sections are the run's parameters).
        corpus_uri: the raw corpus (see :mod:`components.sources`).
        pipeline_root: the folder every run's artifacts go under.
        mlflow_uri: MLflow tracking URI for training runs and the registry.
        shards: extraction shards.
        caching: reuse the outputs of tasks whose inputs are unchanged (KFP's local cache).

    Raises:
        PipelineError: a task failed (its log, printed above, says why).
    """
    from kfp import local

    pipeline_root = Path(pipeline_root).resolve()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    before = set(pipeline_root.iterdir())
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               raise_on_error=True, enable_caching=caching)
    pipeline = build(params, shards=shards)
    t0 = time.perf_counter()
    _prepare_store(mlflow_uri)
    try:
        pipeline(corpus_uri=corpus_uri, mlflow_uri=mlflow_uri)
    except RuntimeError as exc:
        # KFP colours its message for a terminal; the task's own log, printed above, says why.
        raise PipelineError("the local run failed: " + ANSI.sub("", str(exc))) from None
    seconds = time.perf_counter() - t0
    runs = sorted((p for p in set(pipeline_root.iterdir()) - before if p.name.startswith(NAME)),
                  key=lambda p: p.stat().st_mtime)
    if not runs:
        raise PipelineError(f"the local run wrote nothing under {pipeline_root}")
    return LocalRun(runs[-1], seconds)


def _prepare_store(uri: str) -> None:
    """Create a SQLite MLflow store and the experiment before tasks run two at a time: two
    tasks creating the same tables or experiment at once fail (a server has no such race)."""
    if not uri.startswith("sqlite:"):
        return
    import mlflow

    from veracity.tracking import EXPERIMENT

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(EXPERIMENT)


def check_host(host: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast, with the host named, when nothing answers at ``host`` (a URL).

    Raises:
        PipelineError: not an http(s) URL, or no TCP connection within ``timeout``.
    """
    url = urlparse(host)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise PipelineError(f"--host must be an http(s) URL of the Kubeflow Pipelines API, got {host!r}")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise PipelineError(f"cannot reach Kubeflow Pipelines at {host}: {exc}") from None


def check_pipeline_root(pipeline_root: str) -> None:
    """A cluster's pipeline root must be object storage that every pod can reach.

    Raises:
        PipelineError: a local path or an unknown scheme.
    """
    scheme = urlparse(pipeline_root).scheme
    if scheme not in OBJECT_STORES:
        raise PipelineError(f"--pipeline-root must be on object storage ({', '.join(s + '://' for s in OBJECT_STORES)}), "
                            f"got {pipeline_root!r}")


def submit(package: Path, host: str, *, corpus_uri: str, mlflow_uri: str, pipeline_root: str, experiment: str,
           run_name: str, timeout: float = CONNECT_TIMEOUT_S) -> str:
    """Submit a compiled pipeline to a Kubeflow Pipelines host; the run's id.

    Raises:
        PipelineError: no package, a pipeline root off object storage, a missing corpus or
            MLflow URI, or a host that does not answer or refuses the run.
    """
    package = Path(package)
    if not package.is_file():
        raise PipelineError(f"no compiled pipeline at {package} (run `veracity pipeline compile` first)")
    check_pipeline_root(pipeline_root)
    for value, flag in ((corpus_uri, "--corpus-uri"), (mlflow_uri, "--mlflow-uri")):
        if not value:
            raise PipelineError(f"{flag} is required on a cluster (a bucket path or dvc+<repo>#<path>; an MLflow server)")
    check_host(host, timeout)
    import kfp
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        client = kfp.Client(host=host)
        result = client.create_run_from_pipeline_package(
            str(package), arguments={"corpus_uri": corpus_uri, "mlflow_uri": mlflow_uri}, run_name=run_name,
            experiment_name=experiment, pipeline_root=pipeline_root)
    except (ApiException, HTTPError, OSError) as exc:
        raise PipelineError(f"Kubeflow Pipelines at {host} did not take the run: {exc}") from None
    return str(result.run_id)
