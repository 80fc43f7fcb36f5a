"""The Kubeflow components: one lightweight KFP v2 component per pipeline stage.

Each is a shim over its stage function in :mod:`veracity.stages`: it turns its
``params.yaml`` sections (JSON string parameters) into typed config, lays its input artifacts out
as the stage function expects, calls it, and records what it wrote as typed artifacts with
metadata (data contract, sha256, bundle version). They run in the project's image
(:data:`IMAGE`, the package installed), so a task installs nothing: KFP embeds each
function's source, and its imports are of the installed ``veracity`` and ``components``.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import (
    HTML,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
)

# The image built from docker/Dockerfile (CUDA variant: it runs on CPU nodes too). A name
# with "python" in it: KFP's local runner warns on every task otherwise.
IMAGE = "veracity-python:0.1.0"

component = dsl.component(base_image=IMAGE, install_kfp_package=False)


@component
def corpus(corpus_uri: str, corpus: str, dataset: Output[Dataset]):
    """Fetch the raw corpus from ``corpus_uri`` and build its manifest (stage ``corpus``)."""
    from pathlib import Path

    from components import artifacts as a
    from components.sources import fetch
    from veracity.stages.corpus import corpus as run

    root = Path(dataset.path)
    df = run(a.params(corpus=corpus).corpus, (root / a.MANIFEST).parent, fetch(corpus_uri, root / a.RAW))
    a.describe(dataset, source=corpus_uri, clips=len(df), manifest_sha256=a.file_digest(root / a.MANIFEST))


@component
def validate(dataset: Input[Dataset], validate: str, report: Output[Dataset], page: Output[HTML],
             summary: Output[Metrics]):
    """Great Expectations on the manifest (stage ``validate``); fails the run when one fails."""
    import json
    import shutil
    from pathlib import Path

    from components import artifacts as a
    from veracity.stages.validate import validate_manifest

    out = Path(report.path)
    validate_manifest(a.params(validate=validate).validate_, Path(dataset.path) / a.MANIFEST, out)
    shutil.copy(out / "manifest.html", page.path)
    a.log_figures(summary, json.loads((out / "summary.json").read_text()))


@component
def extract_shard(dataset: Input[Dataset], shard: int, shards: int, extract: str, contract: str,
                  part: Output[Dataset]):
    """Extract one shard of the clips (stage ``extract``, fanned out)."""
    from pathlib import Path

    from components import artifacts as a
    from veracity.stages.extract import extract as run

    cfg = a.params(extract=extract, contract=contract)
    res = run(cfg.extract, cfg.contract.build(), Path(dataset.path) / a.MANIFEST, Path(part.path),
              shard=(int(shard), int(shards)))
    a.describe(part, shard=int(shard), shards=int(shards), clips=res.processed + res.reused)


@component
def merge(dataset: Input[Dataset], parts: Input[list[Dataset]], extract: str, features: Output[Dataset],
          summary: Output[Metrics]):
    """Join the shards into one features folder and apply the failure bound (stage ``extract``)."""
    import json
    from pathlib import Path

    from components import artifacts as a
    from veracity.stages.extract import merge as run

    out = a.merge_trees([Path(p.path) for p in parts], Path(features.path))
    res = run(a.params(extract=extract).extract, out, Path(dataset.path) / a.MANIFEST)
    a.log_figures(summary, res.summary)
    a.describe(features, contract=json.loads((out / "contract.json").read_text()),
               index_sha256=a.file_digest(out / "index.csv"))


@component
def validate_features(features: Input[Dataset], validate: str, extract: str, report: Output[Dataset],
                      page: Output[HTML], summary: Output[Metrics]):
    """Great Expectations on the extraction index (stage ``validate_features``)."""
    import json
    import shutil
    from pathlib import Path

    from components import artifacts as a
    from veracity.stages.validate import validate_features as run

    cfg, out = a.params(validate=validate, extract=extract), Path(report.path)
    run(cfg.validate_.features, cfg.extract.usable_statuses, Path(features.path) / "index.csv", out)
    shutil.copy(out / "features.html", page.path)
    a.log_figures(summary, json.loads((out / "summary.json").read_text()))


@component
def train_member(member: str, features: Input[Dataset], train: str, extract: str, metrics: str,
                 mlflow_uri: str, model: Output[Model], summary: Output[Metrics]):
    """Train one member from scratch (stage ``train@<member>``)."""
    from components import artifacts as a

    a.train(member, features, a.scratch(), dict(train=train, extract=extract, metrics=metrics), mlflow_uri, model,
            summary)


@component
def gather_members(members: Input[list[Model]], models: Output[Model]):
    """The members trained from scratch as one ``models/<member>`` folder, for those warm-started from them."""
    import shutil

    from components import artifacts as a

    shutil.copytree(a.members_dir(members), models.path, symlinks=False)


@component
def train_warm_member(member: str, features: Input[Dataset], sources: Input[Model], train: str,
                      extract: str, metrics: str, mlflow_uri: str, model: Output[Model],
                      summary: Output[Metrics]):
    """Train a member warm-started from trained ones (stage ``train_fusion@<member>``)."""
    from pathlib import Path

    from components import artifacts as a

    a.train(member, features, Path(sources.path), dict(train=train, extract=extract, metrics=metrics), mlflow_uri, model,
            summary)


@component
def evaluate(members: Input[list[Model]], warm_members: Input[list[Model]], evaluate: str, train: str,
             metrics: str, mlflow_uri: str, report: Output[Dataset], summary: Output[Metrics]):
    """Every member on the held-out split (stage ``evaluate``)."""
    from pathlib import Path

    from components import artifacts as a
    from veracity.stages.evaluate import evaluate as run

    cfg = a.params(evaluate=evaluate, train=train, metrics=metrics)
    res = run(cfg.evaluate, cfg.train, a.members_dir(members, warm_members), Path(report.path),
              ece_bins=cfg.metrics.ece_bins, root=a.scratch(), mlflow=a.use_mlflow(mlflow_uri))
    a.log_figures(summary, res["summary"], keep=["members"])


@component
def calibrate(members: Input[list[Model]], warm_members: Input[list[Model]], calibrate: str, train: str,
              metrics: str, calibration: Output[Model], report: Output[Dataset], summary: Output[Metrics]):
    """Pooling, calibrators, fusion and thresholds on validation scores (stage ``calibrate``)."""
    from pathlib import Path

    from components import artifacts as a
    from veracity.stages.calibrate import CALIBRATION_JSON
    from veracity.stages.calibrate import calibrate as run

    cfg, out = a.params(calibrate=calibrate, train=train, metrics=metrics), Path(calibration.path)
    res = run(cfg.calibrate, cfg.train.members, a.members_dir(members, warm_members), out, Path(report.path),
              ece_bins=cfg.metrics.ece_bins)
    a.log_figures(summary, res, keep=["ensemble"])
    a.describe(calibration, sha256=a.file_digest(out / CALIBRATION_JSON), rule=res["ensemble"]["rule"])


@component
def attack(dataset: Input[Dataset], features: Input[Dataset], members: Input[list[Model]],
           warm_members: Input[list[Model]], calibration: Input[Model], attack: str, extract: str,
           report: Output[Dataset], summary: Output[Metrics]):
    """Corruptions and gradient attacks on members and ensemble (stage ``attack``)."""
    from pathlib import Path

    from components import artifacts as a
    from veracity.stages.attack import attack as run
    from veracity.stages.calibrate import CALIBRATION_JSON

    cfg, corpus = a.params(attack=attack, extract=extract), Path(dataset.path)
    res = run(cfg.attack, cfg.extract, a.members_dir(members, warm_members),
              Path(calibration.path) / CALIBRATION_JSON, Path(features.path), corpus / a.MANIFEST, corpus / a.RAW,
              Path(report.path))
    a.log_figures(summary, res, keep=["clean", "gate"])


@component
def ensemble(features: Input[Dataset], members: Input[list[Model]], warm_members: Input[list[Model]],
             calibration: Input[Model], calibrate_report: Input[Dataset], robustness: Input[Dataset],
             ensemble: str, gate: str, metrics: str, extract: str, generate: str, analyze: str,
             bundle: Output[Model], report: Output[Dataset], summary: Output[Metrics]):
    """Assemble the bundle, set its FAKE cuts on new people's reals, score, export, save and
    verify it (stage ``ensemble``)."""
    import json
    from pathlib import Path

    from components import artifacts as a
    from veracity.stages.calibrate import CALIBRATION_JSON
    from veracity.stages.ensemble import ensemble as run

    cfg = a.params(ensemble=ensemble, gate=gate, metrics=metrics, extract=extract, generate=generate, analyze=analyze)
    out = Path(bundle.path)
    res = run(cfg.ensemble, cfg.gate, cfg.extract, a.members_dir(members, warm_members),
              Path(calibration.path) / CALIBRATION_JSON, Path(features.path), out, Path(report.path),
              ece_bins=cfg.metrics.ece_bins, root=a.scratch(), robustness=Path(robustness.path) / "summary.json",
              calibrate_report=Path(calibrate_report.path) / "metrics.json", generate_cfg=cfg.generate,
              analyze=cfg.analyze, reals_work=Path(a.scratch()) / "reals")
    a.log_figures(summary, res["ensemble"], keep=["test"])
    spec = json.loads((out / "bundle.json").read_text())
    a.describe(bundle, sha256=a.file_digest(out / "bundle.json"), bundle_format=spec["format"],
               bundle_version=spec["version"], contract=spec["contract"],
               members=[m["name"] for m in spec["members"]])


@component
def benchmark_corpus(generate: str, benchmark: str, dataset: Output[Dataset]):
    """The benchmark corpus: people no split has seen (stage ``benchmark_corpus``)."""
    from pathlib import Path

    from components import artifacts as a
    from veracity.stages.generate import benchmark_corpus as run

    cfg = a.params(generate=generate, benchmark=benchmark)
    res = run(cfg.generate, cfg.benchmark, Path(dataset.path))
    a.describe(dataset, clips=res.n_clips, fingerprint=res.fingerprint)


@component
def benchmark(bundle: Input[Model], dataset: Input[Dataset], benchmark: str, analyze: str, metrics: str,
              report: Output[Dataset], summary: Output[Metrics], roc: Output[ClassificationMetrics]):
    """The bundle on the benchmark corpus through its Analyzer (stage ``benchmark``)."""
    from pathlib import Path

    from components import artifacts as a
    from veracity.stages.benchmark import SCORES_CSV
    from veracity.stages.benchmark import benchmark as run

    cfg, out = a.params(benchmark=benchmark, analyze=analyze, metrics=metrics), Path(report.path)
    res = run(cfg.benchmark, cfg.analyze, Path(bundle.path), Path(dataset.path), out, ece_bins=cfg.metrics.ece_bins)
    a.log_figures(summary, {"ensemble": {k: v["value"] for k, v in res["ensemble"].items() if "value" in v}})
    a.log_benchmark_classification(roc, out / SCORES_CSV)
    a.describe(report, bundle_sha256=f"sha256:{res['bundle_sha256']}")


@component
def monitor(bundle: Input[Model], monitor: str, generate: str, benchmark: str, report: Output[Dataset],
            page: Output[HTML], summary: Output[Metrics]):
    """A simulated stream of new people through the bundle, judged for drift (stage ``monitor``)."""
    import shutil
    from pathlib import Path

    from components import artifacts as a
    from monitoring.run import monitor_stream

    cfg, out = a.params(monitor=monitor, generate=generate, benchmark=benchmark), Path(report.path)
    res = monitor_stream(cfg.monitor, cfg.generate, Path(bundle.path), out, a.scratch(),
                         avoid=(cfg.generate.seed, cfg.benchmark.seed))
    shutil.copy(out / "report.html", page.path)
    a.log_figures(summary, res)
    a.describe(report, status=res["status"])


@component
def gate(benchmark_report: Input[Dataset], register: str, gate: str
         ) -> NamedTuple("GateResult", [("passed", bool), ("reasons", str)]):
    """The promotion gate's bounds on the benchmark: the pipeline registers only what passes."""
    import json
    from collections import namedtuple
    from pathlib import Path

    from components import artifacts as a
    from veracity.stages.register import gate_metrics, promotion_gate

    cfg = a.params(register=register, gate=gate)
    candidate = gate_metrics(json.loads((Path(benchmark_report.path) / "metrics.json").read_text()))
    passed, reasons = promotion_gate(candidate, None, cfg.register_, cfg.gate)
    return namedtuple("GateResult", ["passed", "reasons"])(passed, "\n".join(reasons))


@component
def register(bundle: Input[Model], benchmark_report: Input[Dataset], register: str, gate: str, mlflow_uri: str,
             card: Output[Markdown], card_page: Output[HTML], summary: Output[Metrics]) -> str:
    """Register the bundle in MLflow and promote it when it beats the champion (stage ``register``)."""
    from pathlib import Path

    from components import artifacts as a
    from veracity.stages import StageError
    from veracity.stages.register import register as run

    if not a.use_mlflow(mlflow_uri):
        raise StageError("register needs an MLflow tracking URI (the mlflow_uri pipeline parameter)")
    cfg, out = a.params(register=register, gate=gate), a.scratch()
    res = run(cfg.register_, cfg.gate, Path(bundle.path), Path(benchmark_report.path) / "metrics.json", out,
              root=a.scratch())
    text = (out / "model_card.md").read_text()
    Path(card.path).write_text(text)
    Path(card_page.path).write_text(a.markdown_page(text, f"{res['model_name']} version {res['version']}"))
    a.log_figures(summary, {"version": int(res["version"]), "promoted": int(res["promoted"])})
    return str(res["version"])


@component
def not_registered(reasons: str, card: Output[Markdown]):
    """What the gate found, for the run's page, when it keeps the bundle out of the registry."""
    from pathlib import Path

    Path(card.path).write_text("# Not registered: the promotion gate failed\n\n"
                               + "\n".join(f"- {r}" for r in reasons.splitlines()) + "\n")


@component
def monitor_log(log_uri: str, bundle_uri: str, mlflow_uri: str, monitor: str, since: str, last: int,
                report: Output[Dataset], page: Output[HTML], summary: Output[Metrics]) -> bool:
    """The service's request log against the served bundle's reference (``veracity monitor``),
    for a recurring run: True when drift was found.

    ``log_uri`` is the request log folder (a path, a bucket path or ``dvc+...``);
    ``bundle_uri`` a registered model (``models:/<name>@<alias>``, resolved in
    ``mlflow_uri``) or a bundle folder; the window is ``since`` (ISO time, or empty) and at
    most ``last`` rows (0: all).
    """
    import shutil
    from pathlib import Path

    from components import artifacts as a
    from components.sources import fetch
    from monitoring.run import monitor as run

    cfg, work = a.params(monitor=monitor), a.scratch()
    if bundle_uri.startswith("models:/"):
        from veracity.tracking import resolve_bundle

        a.use_mlflow(mlflow_uri)
        bundle = resolve_bundle(bundle_uri, work, work / "registry").path
    else:
        bundle = fetch(bundle_uri, work / "bundle")
    res = run(cfg.monitor, bundle, fetch(log_uri, work / "log"), Path(report.path), since=since or None,
              last=int(last) or None)
    shutil.copy(Path(report.path) / "report.html", page.path)
    flag = res["drift_detected"]  # None: the window was not judged (too few rows of this bundle)
    a.log_figures(summary, {"rows": res["rows"], "tests": res["tests"], "alpha": res["alpha"],
                            "drift_detected": -1 if flag is None else int(bool(flag))})
    a.describe(report, status=res["status"], drifted=",".join(res.get("drifted") or []),
               bundle_sha256=(res.get("reference") or {}).get("bundle_sha256"))
    return bool(flag)
