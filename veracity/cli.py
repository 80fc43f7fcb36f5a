"""The ``veracity`` command: one verb per pipeline stage, plus ``analyze``.

A verb parses its arguments, loads the config and calls the stage function of
:mod:`veracity.stages` (which does the whole stage), then prints what it returned;
nothing else. Every verb takes ``--params`` (default ``params.yaml``), repeatable
``--set key=value`` overrides (``--set n_identities=8`` or ``--set
generate.n_identities=8``), resolving ``defaults < params.yaml < --set``, and ``--root``
(the repository whose MLflow store, ``data.dvc`` and ``dvc.lock`` a stage reads; the
current directory by default). Expected failures (bad config, bad data, a failed
expectation or bound) print a readable message and exit non-zero without a traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from veracity.config import ConfigError, load_params, section
from veracity.stages import StageError

app = typer.Typer(
    name="veracity",
    help="Veracity: multimodal deepfake video detection pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to read (missing = defaults).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a key: key=value (highest precedence). Repeatable."),
]
RootOpt = Annotated[Path, typer.Option("--root", help="Repository root (MLflow store, data.dvc, dvc.lock).")]

F = TypeVar("F", bound=Callable[..., object])

# Telemetry of the tools we drive is off: runs must be offline and leave no stray files.
_QUIET_ENV = {
    "DO_NOT_TRACK": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "BENTOML_DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
}


def _err(msg: str) -> None:
    typer.secho(msg, fg=typer.colors.RED, err=True)


def _user_errors(func: F) -> F:
    """Turn the library's expected errors into a message and exit code 2 (1 for a failed check)."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (ConfigError, StageError) as exc:
            _err(f"error: {exc}")
            raise typer.Exit(2) from None
        except Exception as exc:
            # Imported here, not with this module: veracity.bundle brings torch, and every
            # verb (each a DVC stage) would pay seconds of imports it may not need.
            from veracity.bundle import BundleError
            from veracity.corpus.adapters import AdapterError
            from veracity.corpus.manifest import ManifestError
            from veracity.extract import ExtractError
            from veracity.pool import PoolError
            from veracity.validation import ValidationFailed

            if isinstance(exc, ValidationFailed):
                _err(str(exc))
                raise typer.Exit(1) from None
            if isinstance(exc, AdapterError | ManifestError | ExtractError | BundleError | PoolError):
                _err(f"error: {exc}")
                raise typer.Exit(2) from None
            raise

    return wrapper  # type: ignore[return-value]


@app.callback()
def _main() -> None:
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def _progress(desc: str) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback drawing a clip progress bar on a terminal."""
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit="clip", disable=not sys.stderr.isatty())

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(1)

    try:
        yield progress
    finally:
        bar.close()


def _log_to_terminal(level: int) -> None:
    logging.basicConfig(level=level, format="%(message)s")


def _checks(checks: list) -> None:
    for c in checks:
        typer.echo(f"  {'PASS' if c.passed else 'FAIL'} {c.name}: {c.value:.4f} (needs {c.kind} {c.bound})")


@app.command()
@_user_errors
def generate(
    out: Annotated[Path, typer.Option(help="Corpus directory to write.")] = Path("data/raw"),
    force: Annotated[bool, typer.Option(help="Regenerate even if the corpus is up to date.")] = False,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Generate the synthetic audio-visual deepfake corpus (MP4 files + manifest)."""
    from veracity.stages.generate import generate as run

    loaded = load_params(params, set_ or (), "generate")
    if loaded.corpus.source != "synthetic":
        typer.echo(f"corpus.source is {loaded.corpus.source!r}: nothing to generate")
        return
    with _progress("generate") as progress:
        res = run(loaded.generate, out, force=force, progress=progress)
    if res.skipped:
        typer.echo(f"corpus at {out} is up to date (same generator and config); --force regenerates")
    else:
        counts = ", ".join(f"{k}={v}" for k, v in res.counts.items())
        typer.echo(f"wrote {res.n_clips} clips to {out} ({counts})")


@app.command()
@_user_errors
def corpus(
    out: Annotated[Path, typer.Option(help="Directory for manifest.csv and its resolved config.")] = Path(
        "data/manifest"
    ),
    root: Annotated[Path | None, typer.Option(help="Dataset root (default: corpus.root).")] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Turn a raw corpus (synthetic or a real dataset layout) into the manifest."""
    from veracity.stages.corpus import MANIFEST_CSV
    from veracity.stages.corpus import corpus as run

    df = run(load_params(params, set_ or (), "corpus").corpus, out, root)
    by = df.groupby(["split", "method"]).size().unstack(fill_value=0)
    typer.echo(f"wrote {len(df)} rows to {out / MANIFEST_CSV}\n{by.to_string()}")


@app.command()
@_user_errors
def validate(
    manifest_path: Annotated[Path, typer.Option("--manifest", help="Manifest CSV to check.")] = Path(
        "data/manifest/manifest.csv"
    ),
    features: Annotated[
        Path | None, typer.Option(help="Check this extraction index.csv with the features suite instead.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Directory for the GX result JSON/HTML and summary.")] = Path(
        "reports/validate"
    ),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Run a Great Expectations suite (manifest, or extracted features); exit 1 if one fails."""
    from veracity.stages.validate import validate_features, validate_manifest

    loaded = load_params(params, set_ or (), "validate")
    cfg = section(loaded, "validate")
    if features is not None:
        report = validate_features(cfg.features, loaded.extract.usable_statuses, features, out)
    else:
        report = validate_manifest(cfg, manifest_path, out)
    typer.echo(report.summary())


@app.command()
@_user_errors
def extract(
    manifest_path: Annotated[Path, typer.Option("--manifest", help="Manifest CSV of the clips.")] = Path(
        "data/manifest/manifest.csv"
    ),
    out: Annotated[Path, typer.Option(help="Features directory (records, index.csv, summary.json).")] = Path(
        "data/features"
    ),
    shard: Annotated[str | None, typer.Option(help="Process one shard only, as i/n (e.g. 0/4); then --merge.")] = None,
    merge: Annotated[bool, typer.Option("--merge", help="Join finished shard indexes into index.csv.")] = False,
    metrics: Annotated[Path | None, typer.Option(help="Also write summary.json here (for dvc metrics).")] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Extract face crops, audio, voice activity and optical flow for every clip."""
    from veracity.extract import parse_shard
    from veracity.stages import extract as stage

    _log_to_terminal(logging.WARNING)
    loaded = load_params(params, set_ or (), "extract")
    if merge:
        result = stage.merge(loaded.extract, out, manifest_path, metrics=metrics)
    else:
        i, n = parse_shard(shard)
        with _progress(f"extract {i}/{n}") as progress:
            result = stage.extract(loaded.extract, loaded.contract.build(), manifest_path, out, shard=(i, n),
                                   metrics=metrics, progress=progress)
        typer.echo(f"shard {i}/{n}: {result.processed} clips extracted, {result.reused} reused")
        if n > 1:
            typer.echo("run `veracity extract --merge` when every shard is done")
            return
    s = result.summary
    typer.echo(f"{s['usable']}/{s['clips']} clips usable, faces in {s['face_found_ratio']:.1%} of frames; "
               f"statuses {s['status']}")


@app.command()
@_user_errors
def train(
    member: Annotated[str, typer.Option(help="Ensemble member to train (a key of train.members).")],
    features: Annotated[Path, typer.Option(help="Extracted features directory.")] = Path("data/features"),
    out: Annotated[Path | None, typer.Option(help="Output directory (default models/<member>).")] = None,
    metrics: Annotated[Path | None, typer.Option(help="Also write the member's metrics JSON here.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in --out.")] = False,
    debug: Annotated[bool, typer.Option(help="1 epoch on 4 clips per split: a quick end-to-end check.")] = False,
    mlflow: Annotated[bool, typer.Option(help="Log the run to MLflow.")] = True,
    members_dir: Annotated[Path, typer.Option(help="Where trained members live (for init_from).")] = Path("models"),
    root: RootOpt = Path("."),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Train one ensemble member on the extracted features (logged to MLflow)."""
    from veracity.stages.train import train as run

    _log_to_terminal(logging.INFO)
    loaded = load_params(params, set_ or (), "train")
    cfg = loaded.train.model_copy(update={"debug": True}) if debug else loaded.train
    res = run(member, cfg, features, out or Path("models") / member, usable_statuses=loaded.extract.usable_statuses,
              ece_bins=loaded.metrics.ece_bins, members_dir=members_dir, root=root, metrics=metrics, resume=resume,
              mlflow=mlflow)
    typer.echo(f"{member}: best epoch {res.best_epoch}, val AUC {res.best_val_auc:.4f}, "
               f"test AUC {res.test.get('auc', float('nan')):.4f}, {res.seconds:.0f} s")


@app.command()
@_user_errors
def calibrate(
    models: Annotated[Path, typer.Option(help="Directory holding one folder per trained member.")] = Path("models"),
    out: Annotated[Path, typer.Option(help="Directory for calibration.json.")] = Path("models/calibration"),
    reports: Annotated[Path, typer.Option(help="Directory for metrics, reliability and scores.")] = Path(
        "reports/calibrate"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Fit pooling, per-member calibrators, fusion and REAL/UNCERTAIN/FAKE thresholds on validation."""
    from veracity.stages.calibrate import calibrate as run

    loaded = load_params(params, set_ or (), "calibrate")
    rep = run(loaded.calibrate, loaded.train.members, models, out, reports, ece_bins=loaded.metrics.ece_bins)
    typer.echo("member             method       ECE test before -> after   Brier before -> after   target AUC")
    for name, m in rep["members"].items():
        t = m["test"]
        typer.echo(f"{name:18s} {m['method']:12s} {t['ece_before']:.4f} -> {t['ece_after']:.4f}"
                   f"          {t['brier_before']:.4f} -> {t['brier_after']:.4f}        {t['auc']:.4f}")
    e = rep["ensemble"]
    typer.echo(f"fusion {e['rule']}: val AUC {e['val']['auc']:.4f}, test AUC {e['test']['auc']:.4f}, "
               f"test ECE {e['test']['ece']:.4f} (perfectly calibrated, same probabilities: median "
               f"{e['test']['ece_if_calibrated_median']:.4f})")
    th = e["thresholds"]
    typer.echo(f"thresholds: REAL < {th['real_below']:.4f} <= UNCERTAIN < {th['fake_at']:.4f} <= FAKE; "
               f"val FPR {th['val_fpr']:.4f} (target {th['target_fpr']:g}), "
               f"val uncertain {th['val_uncertain_rate']:.4f} (target {th['target_uncertain']:g})")


@app.command()
@_user_errors
def ensemble(
    models: Annotated[Path, typer.Option(help="Directory holding one folder per trained member.")] = Path("models"),
    calibration: Annotated[Path, typer.Option(help="calibration.json from `veracity calibrate`.")] = Path(
        "models/calibration/calibration.json"),
    calibrate_report: Annotated[Path | None, typer.Option(help="metrics.json from `veracity calibrate`.")] = Path(
        "reports/calibrate/metrics.json"),
    features: Annotated[Path, typer.Option(help="Extracted features (test split scored).")] = Path("data/features"),
    robustness: Annotated[Path | None, typer.Option(help="summary.json from `veracity attack`.")] = Path(
        "reports/attack/summary.json"),
    out: Annotated[Path, typer.Option(help="Bundle directory to write.")] = Path("models/bundle"),
    reports: Annotated[Path, typer.Option(help="Directory for metrics.json and scores.csv.")] = Path(
        "reports/ensemble"),
    reals_work: Annotated[Path, typer.Option(help="Where the synthetic reals (ensemble.reals) are generated.")] = Path(
        "var/ensemble/reals"),
    root: RootOpt = Path("."),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Assemble the bundle, set its FAKE cuts on new people's reals, score the test split through
    it, export ONNX, save and verify."""
    from veracity.stages.ensemble import ensemble as run

    _log_to_terminal(logging.WARNING)
    loaded = load_params(params, set_ or (), "ensemble")
    res = run(loaded.ensemble, loaded.gate, loaded.extract, models, calibration, features, out, reports,
              ece_bins=loaded.metrics.ece_bins, root=root, robustness=robustness, calibrate_report=calibrate_report,
              generate_cfg=loaded.generate, analyze=loaded.analyze, reals_work=reals_work)
    reals = res.get("reals")
    if reals:
        fused = reals["rules"]["fused"]
        typer.echo(f"FAKE cuts set on {reals['n_judged']} of {reals['n']} authentic clips of new people "
                   f"({reals['source']}): fused {fused['fake_at_val']:.4f} on validation -> {fused['fake_at']:.4f} "
                   f"(those reals at or above validation's cut: {fused['reals_fpr_at_val_cut']:.3f})")
    ens = res["ensemble"]["test"]
    typer.echo(f"bundle written to {out}: test AUC {ens['auc']:.4f}, ECE {ens['ece']:.4f}, FPR {ens['fpr']:.4f}, "
               f"uncertain {ens['uncertain_rate']:.4f} ({ens['n']} clips)")
    typer.echo("test AUC per method: " + ", ".join(f"{k} {v['auc']:.3f}" for k, v in res["ensemble"]["per_method"].items()))
    typer.echo("members, test AUC on all fakes (on their own target): " + ", ".join(
        f"{k} {v['test']['auc']:.3f} ({v['test'].get('target_auc') or float('nan'):.3f})"
        for k, v in res["members"].items()))
    if "onnx" in res:
        typer.echo("ONNX parity (max abs logit diff): " + ", ".join(f"{k} {v:.2g}" for k, v in res["onnx"].items()))
    _checks(res["checks"])
    typer.echo(f"  (ECE a perfectly calibrated model with these probabilities would show on {ens['n']} clips: "
               f"median {ens['ece_if_calibrated_median']:.4f}, 90th percentile {ens['ece_if_calibrated_p90']:.4f})")


@app.command()
@_user_errors
def evaluate(
    models: Annotated[Path, typer.Option(help="Directory holding one folder per trained member.")] = Path("models"),
    out: Annotated[Path, typer.Option(help="Directory for metrics.json, tables and plots.")] = Path("reports/evaluate"),
    mlflow: Annotated[bool, typer.Option(help="Log the evaluation to MLflow.")] = True,
    root: RootOpt = Path("."),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Evaluate every member on the held-out split: metrics, per-method table, plots."""
    from veracity.stages.evaluate import evaluate as run

    loaded = load_params(params, set_ or (), "evaluate")
    res = run(loaded.evaluate, loaded.train, models, out, ece_bins=loaded.metrics.ece_bins, root=root, mlflow=mlflow)
    typer.echo("test AUC per manipulation method (rows) and member (columns):")
    typer.echo(res["per_method"].to_string())
    _checks(res["checks"])


@app.command()
@_user_errors
def register(
    bundle: Annotated[Path, typer.Option(help="Bundle directory written by `veracity ensemble`.")] = Path(
        "models/bundle"
    ),
    out: Annotated[Path, typer.Option(help="Directory for summary.json and model_card.md.")] = Path(
        "reports/register"
    ),
    benchmark: Annotated[Path, typer.Option(help="metrics.json of `veracity benchmark` (the gate reads it).")] = Path(
        "reports/benchmark/metrics.json"),
    root: RootOpt = Path("."),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Register the bundle in MLflow (alias challenger); promote it to champion if it passes the gate."""
    from veracity.stages.register import register as run

    loaded = load_params(params, set_ or (), "register")
    res = run(section(loaded, "register"), loaded.gate, bundle, benchmark, out, root=root)
    for reason in res["reasons"]:
        typer.echo(f"  {reason}")
    if res["promoted"]:
        typer.echo(f"promoted to champion: version {res['version']}")
    else:
        typer.echo(f"stays challenger: version {res['version']} (champion is version {res['champion_version']})")


@app.command("benchmark-corpus")
@_user_errors
def benchmark_corpus(
    out: Annotated[Path, typer.Option(help="Directory of the benchmark corpus.")] = Path("data/benchmark"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Generate the benchmark corpus: new people (benchmark.seed), every method for each."""
    from veracity.stages.generate import benchmark_corpus as run

    loaded = load_params(params, set_ or (), "benchmark")
    with _progress("benchmark corpus") as progress:
        res = run(loaded.generate, loaded.benchmark, out, progress=progress)
    if res.skipped:
        typer.echo(f"benchmark corpus at {out} is up to date ({res.n_clips} clips)")
    else:
        typer.echo(f"wrote {res.n_clips} clips to {out} (" + ", ".join(f"{k}={v}" for k, v in res.counts.items()) + ")")


@app.command()
@_user_errors
def benchmark(
    bundle: Annotated[Path, typer.Option(help="Bundle directory (written by `veracity ensemble`).")] = Path(
        "models/bundle"),
    corpus_dir: Annotated[Path, typer.Option("--corpus", help="Benchmark corpus (`veracity benchmark-corpus`).")] = Path(
        "data/benchmark"),
    out: Annotated[Path, typer.Option(help="Directory for metrics.json, scores.csv and plots.")] = Path(
        "reports/benchmark"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Analyse the benchmark corpus with the bundle; every figure with a 95% interval over people."""
    from veracity.stages.benchmark import benchmark as run

    _log_to_terminal(logging.WARNING)
    loaded = load_params(params, set_ or (), "benchmark")
    with _progress("benchmark") as progress:
        res = run(loaded.benchmark, loaded.analyze, bundle, corpus_dir, out, ece_bins=loaded.metrics.ece_bins,
                  progress=progress)
    ens = res["ensemble"]

    def iv(node: dict) -> str:
        return f"{node['value']:.4f} [{node['lo']:.4f}, {node['hi']:.4f}]"

    typer.echo(f"benchmark: {res['clips_analysed']} analyses in {res['seconds']:.0f} s; {res['n']} clips of "
               f"{res['n_people']} unseen people, {res['n_abstain']} abstained ({out / 'metrics.json'})")
    typer.echo(f"  AUC {iv(ens['auc'])}, ECE {iv(ens['ece'])}, FPR {iv(ens['fpr'])}, "
               f"re-encode drop {iv(res['reencode']['drop'])}; `veracity summary` puts them against the gate")


@app.command()
@_user_errors
def summary(
    root: RootOpt = Path("."),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """A dozen lines on the last pipeline run: corpus, extraction, members, benchmark, gate, champion."""
    from veracity.summary import pipeline_summary

    loaded = load_params(params, set_ or (), None)
    typer.echo(pipeline_summary(root, loaded.gate))


@app.command()
@_user_errors
def analyze(
    path: Annotated[Path, typer.Argument(help="A video file, or a directory whose files are each analysed.")],
    bundle: Annotated[Path, typer.Option(help="Bundle directory (written by `veracity ensemble`).")] = Path(
        "models/bundle"
    ),
    explain: Annotated[
        bool, typer.Option("--explain", help="Add Grad-CAM overlays, audio anomaly segments, modality agreement.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (a list for a directory), not text.")] = False,
    out: Annotated[Path | None, typer.Option(help="Write one <name>.json per file here (overlays below).")] = None,
    runtime: Annotated[str, typer.Option(help="torch, or onnx for the members exported to ONNX.")] = "torch",
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda.")] = "auto",
    workers: Annotated[str, typer.Option(help="Processes for several files, each loading the bundle once: auto "
                                              "(one per core, at most one per file) or a number.")] = "auto",
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Analyse a video, or every file of a directory: verdict, probability, members, timeline.

    Every file gets a report (ABSTAIN with a reason when it cannot be judged, e.g. an
    audio file or an image); sub-folders are listed as skipped. The exit code is 0 when
    all did. A bundle that fails its checksums is refused (exit 2). Several files are
    analysed in --workers processes, the cores shared out among them; the reports come in
    the files' order all the same.
    """
    from veracity.analyzer import folder_inputs, report_text
    from veracity.pool import analyze_files, resolve_workers

    cfg = section(load_params(params, set_ or (), "analyze"), "analyze")
    if runtime not in ("torch", "onnx"):
        raise StageError(f"--runtime must be torch or onnx, got {runtime!r}")
    files, skipped = folder_inputs(path) if path.is_dir() else ([path], [])
    for entry, why in skipped:
        _err(f"skipped {entry}: {why}")
    if path.is_dir() and not files:
        raise StageError(f"{path} holds no files to analyse")
    try:
        n_workers = resolve_workers(workers, len(files))
    except ValueError as exc:
        raise StageError(f"--workers: {exc}") from None
    stems = [f.stem for f in files]
    # <stem>.json, or <file name>.json when two files share a stem (a.mp4, a.mov).
    names = [f.stem if stems.count(f.stem) == 1 else f.name for f in files]
    analysed = analyze_files(files, bundle, workers=n_workers, device=device, runtime=runtime, cfg=cfg,
                             explain=explain, explain_dirs=[out / name if out is not None and explain else None
                                                            for name in names])
    reports = []
    for name, report in zip(names, analysed, strict=True):
        reports.append(report.to_dict())
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{name}.json").write_text(json.dumps(reports[-1], indent=1) + "\n")
        if not as_json:
            typer.echo(report_text(report) + "\n")
    if as_json:
        typer.echo(json.dumps(reports if path.is_dir() else reports[0], indent=1))


@app.command()
@_user_errors
def attack(
    models: Annotated[Path, typer.Option(help="Directory holding one folder per trained member.")] = Path("models"),
    calibration: Annotated[Path, typer.Option(help="calibration.json from `veracity calibrate`.")] = Path(
        "models/calibration/calibration.json"),
    features: Annotated[Path, typer.Option(help="Extracted features (the attack.split clips are used).")] = Path(
        "data/features"),
    manifest_path: Annotated[Path, typer.Option("--manifest", help="Manifest CSV (source files to re-encode).")] = Path(
        "data/manifest/manifest.csv"),
    out: Annotated[Path, typer.Option(help="Directory for robustness.csv, summary.json and plots.")] = Path(
        "reports/attack"),
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda.")] = "auto",
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Robustness of every member and the fused ensemble: re-encode, corruptions, FGSM/PGD."""
    import pandas as pd

    from veracity.stages.attack import ENSEMBLE, ROBUSTNESS_CSV
    from veracity.stages.attack import attack as run

    _log_to_terminal(logging.INFO)
    loaded = load_params(params, set_ or (), "attack")
    summary = run(loaded.attack, loaded.extract, models, calibration, features, manifest_path,
                  Path(loaded.corpus.root), out, device=device)

    def num(v: float | None) -> str:
        return "  nan" if v is None or not math.isfinite(v) else f"{v:.3f}"

    table = pd.read_csv(out / ROBUSTNESS_CSV)
    ens = table[table["target"] == ENSEMBLE]
    typer.echo("clean AUC: " + ", ".join(f"{k} {num(v)}" for k, v in summary["clean"].items()))
    typer.echo("ensemble AUC (drop) per condition and strength:")
    for name, rows in ens.groupby("name", sort=False):
        cells = "  ".join(f"{r.strength:g}: {num(r.auc)} ({num(r.drop)})" for r in rows.itertuples())
        typer.echo(f"  {name:11s} {cells}")
    if summary["failed_extractions"]:
        _err(f"{summary['failed_extractions']} re-encoded clips could not be extracted (left out of their rows)")
    gate, bound = summary["gate"], loaded.gate.max_robustness_drop
    drop = gate["drop"]
    ok = drop is not None and drop <= bound
    shown = "not measured" if drop is None else f"{drop:.3f}"
    typer.echo(f"{'PASS' if ok else 'FAIL'} ensemble AUC drop under {gate['corruption']} {gate['strength']:g}: "
               f"{shown} (needs <= {bound:g})")


weights_app = typer.Typer(help="Weights kept outside the model registry: fetch by URL with a pinned sha256, verify.",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")


def _weights_errors(func: F) -> F:
    """A sha256 that differs exits 1 (a failed check), any other weights error 2."""
    from veracity.weights import ChecksumMismatch, WeightsError

    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ChecksumMismatch as exc:
            _err(f"error: {exc}")
            raise typer.Exit(1) from None
        except WeightsError as exc:
            _err(f"error: {exc}")
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@weights_app.command("fetch")
@_user_errors
@_weights_errors
def weights_fetch(
    url: Annotated[str, typer.Argument(help="http(s):// or file:// URL of the weights file.")],
    sha256: Annotated[str, typer.Option(help="Expected sha256 (64 hex digits); a download that differs is deleted.")],
    out: Annotated[Path, typer.Option(help="File to write, or a directory for the URL's file name.")] = Path("."),
    progress: Annotated[bool, typer.Option(help="Draw a progress bar (on a terminal).")] = True,
) -> None:
    """Download weights (resumable, retried) and keep them only if their sha256 matches."""
    from veracity.weights import fetch

    path = fetch(url, out, sha256, progress=progress)
    typer.echo(f"OK {path} ({path.stat().st_size} bytes)\nsha256 {sha256.lower()}")


@weights_app.command("verify")
@_user_errors
@_weights_errors
def weights_verify(
    path: Annotated[Path, typer.Argument(help="A weights file, or a bundle directory (checked against bundle.json).")],
    sha256: Annotated[str | None, typer.Option(help="Expected sha256 of the file (of bundle.json for a bundle).")] = None,
) -> None:
    """Print a weights file's sha256 (compared with --sha256), or check every file of a bundle; exit 1 if one differs."""
    from veracity.weights import verify

    res = verify(path, sha256)
    if res["kind"] == "bundle":
        typer.echo(f"OK bundle {res['path']}: {res['files']} files match bundle.json")
    else:
        typer.echo(f"{'OK ' if res['checked'] else ''}{res['path']} ({res['size']} bytes)")
    typer.echo(f"sha256 {res['sha256']}")


pipeline_app = typer.Typer(help="The same DAG on Kubeflow Pipelines: compile it, run it here, or submit it to a cluster.",
                            no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")
ShardsOpt = Annotated[int, typer.Option(min=1, help="Extraction shards (tasks fanned out).")]


@pipeline_app.command("compile")
@_user_errors
def pipeline_compile(
    out: Annotated[Path, typer.Option(help="The compiled pipeline (KFP IR YAML).")] = Path("pipelines/training.yaml"),
    shards: ShardsOpt = 2,
    image: Annotated[str | None, typer.Option(help="The components' image in your registry (default: "
                                                   "components.stages.IMAGE).")] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Compile the training pipeline (and the monitoring one beside it, monitoring.yaml); their
    parameters default to params.yaml's sections."""
    from components.stages import IMAGE
    from pipelines.monitoring import compile_pipeline as compile_monitoring
    from pipelines.training import compile_pipeline

    loaded = load_params(params, set_ or ())
    path = compile_pipeline(loaded, out, shards=shards, image=image or IMAGE)
    typer.echo(f"wrote {path}")
    typer.echo(f"wrote {compile_monitoring(loaded, out.with_name('monitoring.yaml'), image=image or IMAGE)}")


@pipeline_app.command("run-local")
@_user_errors
def pipeline_run_local(
    corpus_uri: Annotated[str | None, typer.Option(help="The raw corpus: a path, dvc+<repo>#<path>[@rev] or a "
                                                        "bucket path (default: corpus.root).")] = None,
    pipeline_root: Annotated[Path, typer.Option(help="Where the runs' artifacts go.")] = Path("var/kfp"),
    mlflow_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                                                        "else <root>/mlflow.db).")] = None,
    shards: ShardsOpt = 2,
    cache: Annotated[bool, typer.Option(help="Reuse outputs of tasks whose inputs did not change.")] = False,
    root: RootOpt = Path("."),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Run the whole pipeline here with KFP's local runner (two tasks at a time)."""
    from components.sources import DVC_PREFIX
    from pipelines.run import run_local
    from veracity.tracking import tracking_uri

    loaded = load_params(params, set_ or ())
    uri = corpus_uri or str((root / loaded.corpus.root).resolve())
    if "://" not in uri and not uri.startswith(DVC_PREFIX) and not Path(uri).is_dir():
        raise StageError(f"corpus {uri} is not a directory (run `veracity generate` first, or give --corpus-uri)")
    res = run_local(loaded, uri, pipeline_root, mlflow_uri=mlflow_uri or tracking_uri(root), shards=shards,
                    caching=cache)
    typer.echo(f"run finished in {res.seconds:.0f} s; artifacts under {res.root}")
    if "register" in res.tasks():
        typer.echo(f"the gate passed: registered in {mlflow_uri or tracking_uri(root)} "
                   f"(model card {res.output('register', 'card')})")
    else:
        typer.echo(f"the gate failed: not registered (why: {res.output('not-registered', 'card')})")


@pipeline_app.command("submit")
@_user_errors
def pipeline_submit(
    host: Annotated[str, typer.Option(help="Kubeflow Pipelines API URL, e.g. https://kfp.example.org/pipeline.")],
    corpus_uri: Annotated[str, typer.Option(help="The raw corpus as the cluster sees it: s3://..., gs://... or "
                                                 "dvc+<repo>#<path>[@rev].")],
    mlflow_uri: Annotated[str, typer.Option(help="The MLflow server the members and the bundle are logged to.")],
    pipeline_root: Annotated[str, typer.Option(help="Object storage for the run's artifacts (s3://, gs://, "
                                                    "minio://).")],
    package: Annotated[Path, typer.Option(help="The compiled pipeline.")] = Path("pipelines/training.yaml"),
    experiment: Annotated[str, typer.Option(help="KFP experiment to file the run under.")] = "veracity",
    run_name: Annotated[str | None, typer.Option(help="Run name (default: veracity-training-<UTC time>).")] = None,
) -> None:
    """Submit the compiled pipeline to a Kubeflow Pipelines host."""
    import datetime

    from pipelines.run import submit

    name = run_name or f"veracity-training-{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}"
    run_id = submit(package, host, corpus_uri=corpus_uri, mlflow_uri=mlflow_uri, pipeline_root=pipeline_root,
                    experiment=experiment, run_name=name)
    typer.echo(f"submitted run {name} ({run_id}) to {host}, experiment {experiment}")


BundleUriOpt = Annotated[str, typer.Option(help="The bundle judged against: a registered model "
                                                "(models:/<name>@<alias>) or a bundle folder.")]


@pipeline_app.command("monitor-local")
@_user_errors
def pipeline_monitor_local(
    log_uri: Annotated[str, typer.Option(help="The service's request log folder (a path, a bucket path or "
                                              "dvc+<repo>#<path>).")],
    bundle_uri: BundleUriOpt = "models:/veracity-detector@champion",
    pipeline_root: Annotated[Path, typer.Option(help="Where the runs' artifacts go.")] = Path("var/kfp"),
    mlflow_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: <root>/mlflow.db).")] = None,
    since: Annotated[str, typer.Option(help="Only requests from this ISO time on.")] = "",
    last: Annotated[int, typer.Option(help="At most this many of the newest requests (0: all).")] = 0,
    root: RootOpt = Path("."),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Run the monitoring pipeline once here with KFP's local runner; exit 1 when drift is found."""
    from pipelines.run import monitor_local
    from veracity.tracking import tracking_uri

    res, drift = monitor_local(load_params(params, set_ or ()), log_uri, bundle_uri, pipeline_root,
                               mlflow_uri=mlflow_uri or tracking_uri(root), since=since, last=last)
    typer.echo(f"{'drift found' if drift else 'no drift found'} in {res.seconds:.0f} s; report "
               f"{res.output('monitor-log', 'page')}")
    if drift:
        raise typer.Exit(1)


@pipeline_app.command("schedule")
@_user_errors
def pipeline_schedule(
    host: Annotated[str, typer.Option(help="Kubeflow Pipelines API URL, e.g. https://kfp.example.org/pipeline.")],
    log_uri: Annotated[str, typer.Option(help="The service's request log as the cluster sees it (a bucket path).")],
    mlflow_uri: Annotated[str, typer.Option(help="The MLflow server holding the registered model.")],
    pipeline_root: Annotated[str, typer.Option(help="Object storage for the runs' artifacts (s3://, gs://, "
                                                    "minio://).")],
    cron: Annotated[str, typer.Option(help="KFP's cron, six fields with seconds first.")] = "0 0 * * * *",
    bundle_uri: BundleUriOpt = "models:/veracity-detector@champion",
    package: Annotated[Path, typer.Option(help="The compiled monitoring pipeline.")] = Path("pipelines/monitoring.yaml"),
    experiment: Annotated[str, typer.Option(help="KFP experiment to file the runs under.")] = "veracity-monitoring",
    name: Annotated[str, typer.Option(help="The recurring run's name.")] = "veracity-drift",
) -> None:
    """File the monitoring pipeline as a recurring run on a Kubeflow Pipelines host (hourly by default)."""
    from pipelines.run import schedule

    job = schedule(package, host, log_uri=log_uri, bundle_uri=bundle_uri, mlflow_uri=mlflow_uri,
                   pipeline_root=pipeline_root, cron=cron, experiment=experiment, job_name=name)
    typer.echo(f"recurring run {name} ({job}) on {host}: {cron}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 in a container).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 3000,
    bundle: Annotated[Path | None, typer.Option(help="Serve this bundle directory instead of the registry's "
                                                     "champion (sets VERACITY_BUNDLE).")] = None,
    env: Annotated[bool, typer.Option("--env", help="List the VERACITY_* settings and exit.")] = False,
) -> None:
    """Start the BentoML service (serving/): the champion behind REST routes."""
    import os
    import shutil
    import sys

    from serving.config import env_table

    if env:
        for var, default, meaning in env_table():
            typer.echo(f"{var:32s} {default or '-':40s} {meaning}")
        return
    root = Path(__file__).resolve().parents[1]
    bentoml = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or shutil.which("bentoml")
    if bentoml is None:
        _err("bentoml is not installed in this environment (make setup installs it)")
        raise typer.Exit(2)
    if bundle is not None:
        os.environ["VERACITY_BUNDLE"] = str(bundle.resolve())
    os.environ.setdefault("VERACITY_PROJECT_ROOT", str(Path.cwd()))
    for key, value in {"BENTOML_DO_NOT_TRACK": "true", "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
                       "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}.items():
        os.environ.setdefault(key, value)
    os.execv(bentoml, [bentoml, "serve", "serving.service:Veracity", "--host", host, "--port", str(port),
                       "--working-dir", str(root)])


@app.command()
def worker(
    name: Annotated[str, typer.Option(help="Worker name (Celery's node name is NAME@host).")] = "worker",
    concurrency: Annotated[int, typer.Option(min=1, help="Jobs at once (one process, one model, each).")] = 1,
    pidfile: Annotated[Path | None, typer.Option(help="Write the worker's PID here (removed at exit).")] = None,
    threads: Annotated[int, typer.Option(min=0, help="Torch and OpenCV threads of each job process (0: one per "
                                                     "core; the service gives each local worker its share).")] = 0,
) -> None:
    """Run a job worker: takes analysis jobs from the broker (VERACITY_BROKER_URL, or the
    service's embedded one) and runs them with the champion. The same command at any scale."""
    from serving.config import ServiceConfig
    from veracity.logs import configure_json_logging

    try:
        cfg = ServiceConfig.from_env()
    except ValueError as exc:
        _err(str(exc))
        raise typer.Exit(2) from None
    configure_json_logging(cfg.log_level, file=cfg.log_dir / f"worker-{name}.log")
    from serving.broker import BrokerError, EmbeddedBroker
    from serving.jobs import QUEUE
    from serving.jobs import app as celery

    if not cfg.broker_url:  # the embedded broker: started here when no service has started it
        try:
            EmbeddedBroker(cfg.job_dir / "broker").ensure()
        except BrokerError as exc:
            _err(str(exc))
            raise typer.Exit(2) from None

    if threads:
        from celery.signals import worker_process_init

        from veracity.cores import share_threads

        # In each job process, after the fork and before its model loads (torch is not
        # imported here, so nothing has started a thread pool yet).
        worker_process_init.connect(lambda **_: share_threads(threads), weak=False)
    argv = ["worker", "--pool", "prefork", "--concurrency", str(concurrency), "--queues", QUEUE,
            "--hostname", f"{name}@%h", "--without-gossip", "--without-mingle", "--loglevel", cfg.log_level]
    if pidfile is not None:
        argv += ["--pidfile", str(pidfile)]
    celery.worker_main(argv)


@contextlib.contextmanager
def _bad_input(*errors: type[Exception]) -> Iterator[None]:
    """``errors`` (the user's to fix: no log, a bad window bound, an unknown shift) exit 2 with the message."""
    try:
        yield
    except errors as exc:
        _err(f"error: {exc}")
        raise typer.Exit(2) from None


def _monitor_echo(summary: dict) -> None:
    log = summary["log"]
    typer.echo(f"monitor: {summary['status']}: {summary['rows']} rows of this bundle judged; {log['read']} read, "
               f"{log['at_fault']} at fault, {log['shadow']} shadow, {len(log['files_skipped'])} files skipped")
    for path, why in log["files_skipped"].items():
        _err(f"  skipped {path}: {why}")
    for line in (summary["validation"] or {}).get("failed", []):
        _err(f"  {line}")
    for name in summary["drifted"]:
        c = summary["columns"].get(name) or summary["rates"].get(name.removesuffix("_rate"))
        typer.echo(f"  DRIFT {name}: p={c['p_value']:.2e}")
    for kind, action in summary["actions"].items():
        typer.echo(f"  {kind}: {action}")


@app.command()
@_user_errors
def monitor(
    log: Annotated[Path, typer.Option(help="Request-log folder (the service's VERACITY_REQUEST_LOG_DIR) or one "
                                           "of its .sqlite files.")] = Path("var/serving/requests"),
    bundle: Annotated[Path, typer.Option(help="Bundle whose reference the window is compared with.")] = Path(
        "models/bundle"),
    out: Annotated[Path, typer.Option(help="Folder for report.html, report.json, summary.json (the service "
                                           "serves VERACITY_MONITOR_DIR).")] = Path("var/serving/monitoring"),
    since: Annotated[str | None, typer.Option(help="Rows at or after this UTC time (ISO-8601).")] = None,
    until: Annotated[str | None, typer.Option(help="Rows before this UTC time.")] = None,
    last: Annotated[int | None, typer.Option(min=1, help="Then only the most recent N rows.")] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Drift of a window of the request log against the bundle's reference (Evidently report).

    Exit 0: no drift; 1: drift found; 2: not judged (too few rows) or unusable input."""
    from monitoring.run import monitor as run
    from monitoring.window import WindowError

    _log_to_terminal(logging.WARNING)
    loaded = load_params(params, set_ or (), "monitor")
    with _bad_input(WindowError, ValueError):  # ValueError: a window bound that is no time
        summary = run(loaded.monitor, bundle, log, out, since=since, until=until, last=last)
    _monitor_echo(summary)
    typer.echo(f"  report: {out / 'report.html'}")
    if not summary["judged"]:
        _err(f"not judged: {summary['why_not_judged']}")
        raise typer.Exit(2)
    if summary["drift_detected"]:
        raise typer.Exit(1)


@app.command("monitor-stream")
@_user_errors
def monitor_stream(
    bundle: Annotated[Path, typer.Option(help="Bundle that analyses the stream and whose reference it is "
                                              "compared with.")] = Path("models/bundle"),
    out: Annotated[Path, typer.Option(help="Folder for the reports.")] = Path("reports/monitor"),
    work: Annotated[Path, typer.Option(help="Where the stream's clips are generated and its request log "
                                            "(requests/) is written.")] = Path("var/monitor"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """The monitor stage: a simulated stream (monitor.sim_*) through the bundle, logged, then monitored.

    Exits 0 whatever the verdict (summary.json records it); 2 on unusable input."""
    from monitoring.run import monitor_stream as run
    from monitoring.simulate import SimulationError

    _log_to_terminal(logging.WARNING)
    loaded = load_params(params, set_ or (), "monitor")
    with _bad_input(SimulationError):
        summary = run(loaded.monitor, loaded.generate, bundle, out, work,
                      avoid=(loaded.generate.seed, loaded.benchmark.seed))
    _monitor_echo(summary)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover - `python -m veracity.cli`
    app()
