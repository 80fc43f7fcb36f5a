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
    pipeline_root, before = _local_runner(pipeline_root, caching)
    pipeline = build(params, shards=shards)
    t0 = time.perf_counter()
    _prepare_store(mlflow_uri)
    try:
        pipeline(corpus_uri=corpus_uri, mlflow_uri=mlflow_uri)
    except RuntimeError as exc:
        # KFP colours its message for a terminal; the task's own log, printed above, says why.
        raise PipelineError("the local run failed: " + ANSI.sub("", str(exc))) from None
    return _newest_run(pipeline_root, before, NAME, time.perf_counter() - t0)


def _local_runner(pipeline_root: Path, caching: bool) -> tuple[Path, set[Path]]:
    """KFP's local subprocess runner in this environment; the root and what was in it already."""
    from kfp import local

    pipeline_root = Path(pipeline_root).resolve()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    before = set(pipeline_root.iterdir())
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               raise_on_error=True, enable_caching=caching)
    return pipeline_root, before


def _newest_run(pipeline_root: Path, before: set[Path], name: str, seconds: float) -> LocalRun:
    runs = sorted((p for p in set(pipeline_root.iterdir()) - before if p.name.startswith(name)),
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
    _preflight(package, host, pipeline_root, {"--corpus-uri": corpus_uri, "--mlflow-uri": mlflow_uri}, timeout)
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


def _preflight(package: Path, host: str, pipeline_root: str, required: dict[str, str], timeout: float) -> None:
    """What a cluster needs before anything is sent: the package, object storage, the URIs, a host that answers."""
    package = Path(package)
    if not package.is_file():
        raise PipelineError(f"no compiled pipeline at {package} (run `veracity pipeline compile` first)")
    check_pipeline_root(pipeline_root)
    for flag, value in required.items():
        if not value:
            raise PipelineError(f"{flag} is required on a cluster (a bucket path or dvc+<repo>#<path>; an MLflow server)")
    check_host(host, timeout)


def monitor_local(params: Params, log_uri: str, bundle_uri: str, pipeline_root: Path, *, mlflow_uri: str = "",
                  since: str = "", last: int = 0) -> tuple[LocalRun, bool]:
    """Run the monitoring pipeline once here (KFP's local runner); the run and whether drift was found.

    Raises:
        PipelineError: the task failed (its log, printed above, says why).
    """
    from pipelines.monitoring import NAME as MONITORING
    from pipelines.monitoring import build as build_monitoring

    pipeline_root, before = _local_runner(pipeline_root, caching=False)
    t0 = time.perf_counter()
    try:
        task = build_monitoring(params)(log_uri=log_uri, bundle_uri=bundle_uri, mlflow_uri=mlflow_uri, since=since,
                                        last=int(last))
    except RuntimeError as exc:
        raise PipelineError("the local monitoring run failed: " + ANSI.sub("", str(exc))) from None
    return _newest_run(pipeline_root, before, MONITORING, time.perf_counter() - t0), bool(task.output)


def schedule(package: Path, host: str, *, log_uri: str, bundle_uri: str, mlflow_uri: str, pipeline_root: str,
             cron: str, experiment: str, job_name: str, timeout: float = CONNECT_TIMEOUT_S) -> str:
    """File the compiled monitoring pipeline as a recurring run on a Kubeflow Pipelines host
    (``cron``: KFP's six fields, seconds first); the recurring run's id.

    Raises:
        PipelineError: as :func:`submit`, or a cron expression that is not six fields.
    """
    if len(cron.split()) != 6:
        raise PipelineError(f"--cron takes KFP's six fields (seconds first, e.g. '0 0 * * * *' hourly), got {cron!r}")
    _preflight(package, host, pipeline_root, {"--log-uri": log_uri, "--mlflow-uri": mlflow_uri}, timeout)
    import kfp
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        client = kfp.Client(host=host)
        exp = client.create_experiment(experiment)
        job = client.create_recurring_run(
            exp.experiment_id, job_name, cron_expression=cron, pipeline_package_path=str(package),
            params={"log_uri": log_uri, "bundle_uri": bundle_uri, "mlflow_uri": mlflow_uri},
            pipeline_root=pipeline_root, max_concurrency=1, no_catchup=True)
    except (ApiException, HTTPError, OSError) as exc:
        raise PipelineError(f"Kubeflow Pipelines at {host} did not take the recurring run: {exc}") from None
    return str(job.recurring_run_id)
