"""Recurring drift monitoring on Kubeflow Pipelines: the service's request log against the
served bundle's reference, one task (:func:`components.stages.monitor_log`, which runs
:func:`monitoring.run.monitor`, the function behind ``veracity monitor``).

:func:`build` makes the pipeline with the ``monitor`` section of ``params.yaml`` as its
default; ``pipelines/monitoring.yaml`` is the committed compiled form; :func:`schedule`
files it as a recurring run (a cron schedule) on a Kubeflow Pipelines host, and
``veracity pipeline monitor-local`` runs it here with KFP's local runner.
"""

import tempfile
from pathlib import Path

from kfp import compiler, dsl

from components import stages as c
from pipelines.training import Place, _place, sections
from veracity.config import Params

NAME = "veracity-monitoring"
COMPILED = Path(__file__).with_name("monitoring.yaml")
PLACE = Place("2", "8G", retries=2, cache=False)  # reads a bucket and the registry; a log grows, never cache


def build(params: Params, image: str = c.IMAGE):
    """The monitoring pipeline for ``params`` (its ``monitor`` section is the default)."""
    default = sections(params)["monitor"]

    @dsl.pipeline(name=NAME, description="Veracity's request log judged for drift against the served bundle.")
    def monitoring(log_uri: str, bundle_uri: str = "models:/veracity-detector@champion", mlflow_uri: str = "",
                   since: str = "", last: int = 0, monitor: str = default) -> bool:
        task = c.monitor_log(log_uri=log_uri, bundle_uri=bundle_uri, mlflow_uri=mlflow_uri, monitor=monitor,
                             since=since, last=last)
        _place(task, "monitor", image, PLACE)
        return task.outputs["Output"]

    return monitoring


def compile_pipeline(params: Params, out: Path = COMPILED, *, image: str = c.IMAGE) -> Path:
    """Compile the monitoring pipeline to ``out`` (KFP's IR YAML) and return ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build(params, image=image), str(out))
    return out


def compiled_text(params: Params, *, image: str = c.IMAGE) -> str:
    """What :func:`compile_pipeline` would write, without writing it."""
    with tempfile.TemporaryDirectory() as tmp:
        return compile_pipeline(params, Path(tmp) / "monitoring.yaml", image=image).read_text()
