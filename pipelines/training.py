"""The training DAG on Kubeflow Pipelines: ``dvc.yaml``'s stages as KFP tasks.

:func:`build` makes the pipeline from a :class:`~veracity.config.Params` (``params.yaml``
through the typed config, so one file configures both orchestrators): each section is a
pipeline parameter defaulting to its value there, and a task takes the sections its DVC
stage tracks (:data:`NOT_PARAMS` lists the two it takes from an artifact instead), so a
task's cache key is what it reads. Extraction shards and the members that train from
scratch fan out with ``dsl.ParallelFor`` and are gathered with ``dsl.Collected``; the
warm-started members run after those; ``dsl.If`` on the promotion gate guards ``register``.
:data:`RESOURCES` places every task (CPU and memory; a GPU for training and attack).

:func:`compile_pipeline` writes the YAML (``pipelines/training.yaml`` is committed),
:func:`run_local` runs it with KFP's local ``SubprocessRunner`` in this environment, and
:func:`submit` sends the compiled package to a Kubeflow Pipelines host.
"""

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfp import compiler, dsl

from components import stages as c
from veracity.config import ConfigError, Params, section, to_plain

NAME = "veracity-training"
COMPILED = Path(__file__).with_name("training.yaml")
SHARDS = 2  # extraction shards of the committed YAML (`veracity pipeline compile --shards N`)
GPU = "nvidia.com/gpu"

# Which DVC stage each component runs (tests/unit/pipelines checks both lists against dvc.yaml).
DVC_STAGE: dict[str, str] = {
    "corpus": "corpus",
    "validate": "validate",
    "extract_shard": "extract",
    "merge": "extract",
    "validate_features": "validate_features",
    "train_member": "train",
    "gather_members": "train",
    "train_warm_member": "train_fusion",
    "evaluate": "evaluate",
    "calibrate": "calibrate",
    "attack": "attack",
    "ensemble": "ensemble",
    "benchmark_corpus": "benchmark_corpus",
    "benchmark": "benchmark",
    "monitor": "monitor",
    "gate": "register",
    "register": "register",
    "not_registered": "register",
}

# Sections a DVC stage tracks that its KFP task reads from an artifact instead, and why.
NOT_PARAMS: dict[str, dict[str, str]] = {
    "attack": {"corpus": "corpus.root: the sources it re-encodes are the corpus artifact",
               "contract": "the contract is read from the features artifact the shards wrote with it"},
}


@dataclass(frozen=True)
class Place:
    """Where a task runs: CPU and memory limits, a GPU or not, retries, caching."""

    cpu: str
    memory: str
    gpu: bool = False
    retries: int = 0
    cache: bool = True


RESOURCES: dict[str, Place] = {
    "corpus": Place("1", "4G", retries=2),  # reads a bucket or a DVC remote: transient failures
    "validate": Place("1", "4G"),
    "extract_shard": Place("4", "16G", retries=2),
    "merge": Place("1", "8G"),
    "validate_features": Place("1", "4G"),
    "train_member": Place("8", "32G", gpu=True),
    "gather_members": Place("1", "2G"),
    "train_warm_member": Place("8", "32G", gpu=True),
    "evaluate": Place("2", "8G"),
    "calibrate": Place("2", "8G"),
    "attack": Place("8", "32G", gpu=True),
    "ensemble": Place("4", "16G"),
    "benchmark_corpus": Place("4", "8G"),
    "benchmark": Place("8", "32G"),
    "monitor": Place("4", "16G"),
    "gate": Place("1", "2G"),
    # A registration is a side effect on the MLflow server: never skipped from a cache.
    "register": Place("1", "4G", cache=False),
    "not_registered": Place("1", "1G"),
}

SECTIONS = ("generate", "corpus", "validate", "contract", "extract", "train", "evaluate", "metrics", "calibrate",
            "attack", "ensemble", "benchmark", "gate", "register", "analyze", "monitor")


def sections(params: Params) -> dict[str, str]:
    """Each pipeline section as the JSON a task parses (KFP's dict parameters cannot hold a null)."""
    return {name: json.dumps(to_plain(section(params, name)), sort_keys=True) for name in SECTIONS}


def _place(task: dsl.PipelineTask, name: str, image: str, p: Place | None = None) -> dsl.PipelineTask:
    """Limits, GPU, retries, caching and image of a task (``p``, default :data:`RESOURCES` by name)."""
    p = p or RESOURCES[name]
    task.set_cpu_limit(p.cpu).set_memory_limit(p.memory).set_caching_options(p.cache)
    if p.gpu:
        task.set_accelerator_type(GPU).set_accelerator_limit(1)
    if p.retries:
        task.set_retry(p.retries, backoff_duration="30s", backoff_factor=2.0)
    if image != c.IMAGE:
        task.set_container_image(image)
    return task.set_display_name(name)


def members(params: Params) -> tuple[list[str], list[str]]:
    """``train.members`` split into those trained from scratch and those warm-started from them.

    Raises:
        ConfigError: either group is empty (the DAG fans out over both).
    """
    plain = sorted(m for m, cfg in params.train.members.items() if not cfg.init_from)
    warm = sorted(m for m, cfg in params.train.members.items() if cfg.init_from)
    if not plain or not warm:
        raise ConfigError(f"the Kubeflow DAG needs members trained from scratch and warm-started ones (init_from); "
                          f"train.members has {plain or 'none'} and {warm or 'none'}")
    return plain, warm


def build(params: Params, *, shards: int = SHARDS, image: str = c.IMAGE) -> Any:
    """The training pipeline for ``params`` (its sections become the parameters' defaults).

    Raises:
        ConfigError: fewer than one shard, or :func:`members` fails.
    """
    if shards < 1:
        raise ConfigError(f"shards must be at least 1, got {shards}")
    plain, warm = members(params)
    s = sections(params)

    def task(component: Any, **kwargs: Any) -> dsl.PipelineTask:
        return _place(component(**kwargs), component.name.replace("-", "_"), image)

    @dsl.pipeline(name=NAME, description="Veracity's DVC DAG on Kubeflow: corpus to registered bundle.")
    def training(corpus_uri: str = "", mlflow_uri: str = "",
                 generate: str = s["generate"], corpus: str = s["corpus"], validate: str = s["validate"],
                 contract: str = s["contract"], extract: str = s["extract"], train: str = s["train"],
                 evaluate: str = s["evaluate"], metrics: str = s["metrics"], calibrate: str = s["calibrate"],
                 attack: str = s["attack"], ensemble: str = s["ensemble"], benchmark: str = s["benchmark"],
                 gate: str = s["gate"], register: str = s["register"], analyze: str = s["analyze"],
                 monitor: str = s["monitor"]):
        data = task(c.corpus, corpus_uri=corpus_uri, corpus=corpus).outputs["dataset"]
        checked = task(c.validate, dataset=data, validate=validate)
        with dsl.ParallelFor(items=list(range(shards))) as shard:
            part = task(c.extract_shard, dataset=data, shard=shard, shards=shards, extract=extract,
                        contract=contract).after(checked)
        features = task(c.merge, dataset=data, parts=dsl.Collected(part.outputs["part"]),
                        extract=extract).outputs["features"]
        features_ok = task(c.validate_features, features=features, validate=validate, extract=extract)
        learn = dict(features=features, train=train, extract=extract, metrics=metrics, mlflow_uri=mlflow_uri)
        with dsl.ParallelFor(items=plain) as member:
            scratch = task(c.train_member, member=member, **learn).after(features_ok)
        # A Collected list cannot enter another loop: the warm members get it as one folder.
        gathered = task(c.gather_members, members=dsl.Collected(scratch.outputs["model"])).outputs["models"]
        with dsl.ParallelFor(items=warm) as member:
            warmed = task(c.train_warm_member, member=member, sources=gathered, **learn)

        def trained() -> dict[str, dsl.Collected]:  # one Collected per consumer: compiling one rewrites it
            return dict(members=dsl.Collected(scratch.outputs["model"]),
                        warm_members=dsl.Collected(warmed.outputs["model"]))

        task(c.evaluate, evaluate=evaluate, train=train, metrics=metrics, mlflow_uri=mlflow_uri, **trained())
        cal = task(c.calibrate, calibrate=calibrate, train=train, metrics=metrics, **trained())
        robust = task(c.attack, dataset=data, features=features, calibration=cal.outputs["calibration"],
                      attack=attack, extract=extract, **trained())
        bundle = task(c.ensemble, features=features, calibration=cal.outputs["calibration"],
                      calibrate_report=cal.outputs["report"], robustness=robust.outputs["report"], ensemble=ensemble,
                      gate=gate, metrics=metrics, extract=extract, generate=generate, analyze=analyze,
                      **trained()).outputs["bundle"]
        people = task(c.benchmark_corpus, generate=generate, benchmark=benchmark).outputs["dataset"]
        report = task(c.benchmark, bundle=bundle, dataset=people, benchmark=benchmark, analyze=analyze,
                      metrics=metrics).outputs["report"]
        task(c.monitor, bundle=bundle, monitor=monitor, generate=generate, benchmark=benchmark)
        verdict = task(c.gate, benchmark_report=report, register=register, gate=gate)
        with dsl.If(verdict.outputs["passed"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition)
            task(c.register, bundle=bundle, benchmark_report=report, register=register, gate=gate,
                 mlflow_uri=mlflow_uri)
        with dsl.Else(name="gate-failed"):
            task(c.not_registered, reasons=verdict.outputs["reasons"])

    return training


def compile_pipeline(params: Params, out: Path = COMPILED, *, shards: int = SHARDS, image: str = c.IMAGE) -> Path:
    """Compile the pipeline for ``params`` to ``out`` (KFP's IR YAML) and return ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build(params, shards=shards, image=image), str(out))
    return out


def compiled_text(params: Params, *, shards: int = SHARDS, image: str = c.IMAGE) -> str:
    """What :func:`compile_pipeline` would write, without writing it."""
    with tempfile.TemporaryDirectory() as tmp:
        return compile_pipeline(params, Path(tmp) / "training.yaml", shards=shards, image=image).read_text()
