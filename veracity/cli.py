"""The ``veracity`` command: one verb per pipeline stage.

Every verb takes ``--params`` (default ``params.yaml``) and repeatable ``--set key=value``
overrides (``--set n_identities=8`` or ``--set generate.n_identities=8``), resolving
``defaults < params.yaml < --set``. Expected failures (bad config, bad data, a failed
expectation) print a readable message and exit non-zero without a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import typing
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from veracity.config import ConfigError, load_params, section, to_plain, write_resolved

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

F = TypeVar("F", bound=Callable[..., object])

# Telemetry of the tools we drive is off: runs must be offline and leave no stray files.
_QUIET_ENV = {
    "DO_NOT_TRACK": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "BENTOML_DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
}


class StageError(RuntimeError):
    """An expected stage failure whose message is for the user, not a traceback."""


def _err(msg: str) -> None:
    typer.secho(msg, fg=typer.colors.RED, err=True)


def _user_errors(func: F) -> F:
    """Turn the library's expected errors into a message and exit code 2 (1 for a failed check)."""
    from veracity.corpus.adapters import AdapterError
    from veracity.corpus.manifest import ManifestError

    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (ConfigError, AdapterError, ManifestError, StageError) as exc:
            _err(f"error: {exc}")
            raise typer.Exit(2) from None

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


def _stamp_path(out: Path) -> Path:
    return out.parent / f".{out.name}.generated.json"


def _generator_fingerprint(cfg_plain: dict) -> str:
    """Hash of the generator's code and config: same fingerprint, same bytes."""
    from veracity.corpus import synth
    from veracity.media import encode

    h = hashlib.sha256(json.dumps(cfg_plain, sort_keys=True).encode())
    files = sorted(Path(synth.__file__).parent.glob("*.py")) + [Path(encode.__file__)]
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


@app.command()
@_user_errors
def generate(
    out: Annotated[Path, typer.Option(help="Corpus directory to write.")] = Path("data/raw"),
    force: Annotated[bool, typer.Option(help="Regenerate even if the corpus is up to date.")] = False,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Generate the synthetic audio-visual deepfake corpus (MP4 files + manifest)."""

    from veracity.corpus.synth import generate as run_generate
    from veracity.corpus.synth.generate import IDENTITIES_NAME, MANIFEST_NAME

    loaded = load_params(params, set_ or (), "generate")
    if loaded.corpus.source != "synthetic":
        typer.echo(f"corpus.source is {loaded.corpus.source!r}: nothing to generate")
        return
    cfg = section(loaded, "generate")
    if out.exists() and any(out.iterdir()) and not (out / IDENTITIES_NAME).exists() and not force:
        # Never overwrite a real dataset someone placed where the synthetic corpus goes.
        raise StageError(f"{out} holds files that `veracity generate` did not write; use another --out or --force")
    fingerprint = _generator_fingerprint(to_plain(cfg, exclude=cfg.EXECUTION_ONLY))
    stamp = _stamp_path(out)
    up_to_date = (
        stamp.exists()
        and (out / MANIFEST_NAME).exists()
        and json.loads(stamp.read_text()).get("fingerprint") == fingerprint
    )
    if up_to_date and not force:
        typer.echo(f"corpus at {out} is up to date (same generator and config); --force regenerates")
        return
    with _progress("generate") as progress:
        result = run_generate(cfg, out, progress=progress)
    stamp.write_text(json.dumps({"fingerprint": fingerprint, "n_clips": result.n_clips}))
    counts = ", ".join(f"{k}={v}" for k, v in result.counts.items())
    typer.echo(f"wrote {result.n_clips} clips to {out} ({counts})")


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
    from veracity.corpus import manifest
    from veracity.corpus.adapters import build_manifest

    cfg = section(load_params(params, set_ or (), "corpus"), "corpus")
    root = root or Path(cfg.root)
    if not root.exists():
        raise StageError(
            f"corpus root {root} does not exist"
            + (" (run `veracity generate` first)" if cfg.source == "synthetic" else "")
        )
    df = build_manifest(cfg, root, out)
    path = manifest.write(df, out / "manifest.csv")
    write_resolved(cfg, out)
    by = df.groupby(["split", "method"]).size().unstack(fill_value=0)
    typer.echo(f"wrote {len(df)} rows to {path}\n{by.to_string()}")


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
    from veracity.config import ExtractStatus
    from veracity.validation import validate_features, validate_manifest

    loaded = load_params(params, set_ or (), "validate")
    cfg = section(loaded, "validate")
    if features is not None:
        report = validate_features(cfg.features, loaded.extract.usable_statuses,
                                   typing.get_args(ExtractStatus), features, out)
        write_resolved(cfg.features, out)
    else:
        report = validate_manifest(cfg, manifest_path, out)
        write_resolved(cfg, out)
    if not report.success:
        _err(report.summary())
        _err(f"full result: {out}")
        raise typer.Exit(1)
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

    from veracity import extract as ex

    loaded = load_params(params, set_ or (), "extract")
    cfg, contract = loaded.extract, loaded.contract.build()
    try:
        if merge:
            result = ex.merge(cfg, out, manifest_path)
        else:
            i, n = ex.parse_shard(shard)
            with _progress(f"extract {i}/{n}") as progress:
                result = ex.extract(cfg, contract, manifest_path, out, (i, n), progress=progress)
            typer.echo(f"shard {i}/{n}: {result.processed} clips extracted, {result.reused} reused")
            if n > 1:
                typer.echo("run `veracity extract --merge` when every shard is done")
                return
        summary = result.summary
        if metrics is not None:
            metrics.parent.mkdir(parents=True, exist_ok=True)
            metrics.write_text(json.dumps(summary, indent=2, sort_keys=True))
        typer.echo(f"{summary['usable']}/{summary['clips']} clips usable, faces in "
                   f"{summary['face_found_ratio']:.1%} of frames; statuses {summary['status']}")
        bad = result.index[~result.index["status"].isin(cfg.usable_statuses)]
        for row in bad.head(20).itertuples():
            _err(f"  {row.video_id}: {row.status}: {row.message}")
        ex.check_failures(summary, cfg)
    except ex.ExtractError as exc:
        raise StageError(str(exc)) from None


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
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Train one ensemble member on the extracted features (logged to MLflow)."""
    import logging

    from veracity.tracking import start_run
    from veracity.training import MODEL_META, MODEL_WEIGHTS, PREDICTIONS
    from veracity.training import train as run_train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    loaded = load_params(params, set_ or (), "train")
    cfg = loaded.train.model_copy(update={"debug": True}) if debug else loaded.train
    if member not in cfg.members:
        raise StageError(f"unknown member {member!r}; train.members has {sorted(cfg.members)}")
    mcfg = cfg.members[member]
    out = out or Path("models") / member
    run = start_run(f"train-{member}", tags={"stage": "train", "member": member}) if mlflow else contextlib.nullcontext()
    with run as tracker:
        if tracker is not None:
            tracker.log_params({"member": to_plain(mcfg), "train": to_plain(cfg, exclude={"members"}),
                                "contract": json.loads((features / "contract.json").read_text())})
        result = run_train(member, mcfg, cfg, features, out, resume=resume, tracker=tracker,
                           members_dir=members_dir)
        if tracker is not None:
            tracker.log_metrics({f"test_{k}": v for k, v in result.test.items()})
            tracker.log_metrics({"best_val_auc": result.best_val_auc, "train_seconds": result.seconds})
            for name in (MODEL_META, MODEL_WEIGHTS, PREDICTIONS):
                tracker.log_artifact(out / name, "model")
    # No wall time here: the metrics file is a DVC output, and the same data and seed must
    # give the same bytes (train_seconds is in MLflow and printed below).
    report = {"member": member, "best_epoch": result.best_epoch, "best_val_auc": result.best_val_auc,
              **{f"test_{k}": v for k, v in result.test.items()}}
    if metrics is not None:
        metrics.parent.mkdir(parents=True, exist_ok=True)
        metrics.write_text(json.dumps(report, indent=2, sort_keys=True, default=float))
    typer.echo(f"{member}: best epoch {result.best_epoch}, val AUC {result.best_val_auc:.4f}, "
               f"test AUC {result.test.get('auc', float('nan')):.4f}, {result.seconds:.0f} s")


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
    from veracity.calibration import calibrate as run_calibrate

    loaded = load_params(params, set_ or (), "calibrate")
    try:
        rep = run_calibrate(models, loaded.train.members, loaded.calibrate, out, reports)
    except (FileNotFoundError, ValueError) as exc:
        raise StageError(str(exc)) from None
    write_resolved(loaded.calibrate, out)
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
    features: Annotated[Path, typer.Option(help="Extracted features (test split scored).")] = Path("data/features"),
    robustness: Annotated[Path | None, typer.Option(help="summary.json from `veracity attack`.")] = Path(
        "reports/attack/summary.json"),
    out: Annotated[Path, typer.Option(help="Bundle directory to write.")] = Path("models/bundle"),
    reports: Annotated[Path, typer.Option(help="Directory for metrics.json and scores.csv.")] = Path(
        "reports/ensemble"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Assemble the bundle, score the test split through it, export ONNX, save and verify."""
    import logging

    from veracity.ensemble import BundleError, build_bundle

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    loaded = load_params(params, set_ or (), "ensemble")
    for path in (calibration, robustness):
        if path is not None and not path.is_file():
            raise StageError(f"{path} does not exist; run the stage that writes it first (dvc repro)")
    try:
        res = build_bundle(models, calibration, features, loaded.ensemble, loaded.extract, out, reports,
                           robustness=robustness, calibrate_report=Path("reports/calibrate/metrics.json")
                           if Path("reports/calibrate/metrics.json").is_file() else None)
    except (BundleError, FileNotFoundError, ValueError) as exc:
        raise StageError(str(exc)) from None
    ens = res["ensemble"]["test"]
    typer.echo(f"bundle written to {out}: test AUC {ens['auc']:.4f}, ECE {ens['ece']:.4f}, FPR {ens['fpr']:.4f}, "
               f"uncertain {ens['uncertain_rate']:.4f} ({ens['n']} clips)")
    typer.echo("test AUC per method: " + ", ".join(f"{k} {v['auc']:.3f}" for k, v in res["ensemble"]["per_method"].items()))
    typer.echo("members, test AUC on all fakes (on their own target): " + ", ".join(
        f"{k} {v['test']['auc']:.3f} ({v['test'].get('target_auc') or float('nan'):.3f})"
        for k, v in res["members"].items()))
    if "onnx" in res:
        typer.echo("ONNX parity (max abs logit diff): " + ", ".join(f"{k} {v:.2g}" for k, v in res["onnx"].items()))
    for c in res["_checks"]:
        typer.echo(f"  {'PASS' if c.passed else 'FAIL'} {c.name}: {c.value:.4f} (needs {c.kind} {c.bound})")
    typer.echo(f"  (ECE a perfectly calibrated model with these probabilities would show on {ens['n']} clips: "
               f"median {ens['ece_if_calibrated_median']:.4f}, 90th percentile {ens['ece_if_calibrated_p90']:.4f})")


@app.command()
@_user_errors
def evaluate(
    models: Annotated[Path, typer.Option(help="Directory holding one folder per trained member.")] = Path("models"),
    out: Annotated[Path, typer.Option(help="Directory for metrics.json, tables and plots.")] = Path("reports/evaluate"),
    mlflow: Annotated[bool, typer.Option(help="Log the evaluation to MLflow.")] = True,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Evaluate every member on the held-out split: metrics, per-method table, plots."""

    from veracity.evaluate import evaluate as run_evaluate
    from veracity.tracking import start_run

    loaded = load_params(params, set_ or (), "evaluate")
    members = sorted(loaded.train.members)
    if not members:
        raise StageError("train.members is empty: nothing to evaluate")
    try:
        res = run_evaluate(models, members, out, dict(loaded.evaluate.roles))
    except FileNotFoundError as exc:
        raise StageError(str(exc)) from None
    typer.echo("test AUC per manipulation method (rows) and member (columns):")
    typer.echo(res["per_method"].to_string())
    for c in res["checks"]:
        typer.echo(f"  {'PASS' if c.passed else 'FAIL'} {c.name}: {c.value:.4f} (needs {c.kind} {c.bound})")
    if mlflow:
        with start_run("evaluate", tags={"stage": "evaluate"}) as tracker:
            for member, vals in res["summary"]["members"].items():
                tracker.log_metrics({f"{member}.{k}": v for k, v in vals.items() if v is not None})
            tracker.log_artifact(out, "evaluate")


@app.command()
@_user_errors
def register(
    bundle: Annotated[Path, typer.Option(help="Bundle directory written by `veracity ensemble`.")] = Path(
        "models/bundle"
    ),
    out: Annotated[Path, typer.Option(help="Directory for summary.json and model_card.md.")] = Path(
        "reports/register"
    ),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Register the bundle in MLflow (alias challenger); promote it to champion if it passes the gate."""

    from veracity.ensemble import BundleError
    from veracity.tracking import register_bundle

    loaded = load_params(params, set_ or (), "register")
    cfg = section(loaded, "register")
    if not (bundle / "bundle.json").is_file():
        raise StageError(f"{bundle} holds no bundle.json (run `veracity ensemble` first)")
    out.mkdir(parents=True, exist_ok=True)
    try:
        res = register_bundle(bundle, cfg, card_out=out / "model_card.md")
    except BundleError as exc:
        raise StageError(str(exc)) from None
    # summary.json is a DVC metric: run ids (new on every run) stay in MLflow and the model card.
    summary = {k: v for k, v in res.items() if k != "run_id"}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    write_resolved(cfg, out)
    for reason in res["reasons"]:
        typer.echo(f"  {reason}")
    if res["promoted"]:
        typer.echo(f"promoted to champion: version {res['version']}")
    else:
        typer.echo(f"stays challenger: version {res['version']} (champion is version {res['champion_version']})")


@app.command()
@_user_errors
def analyze(
    path: Annotated[Path, typer.Argument(help="A video file, or a directory of video files.")],
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
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Analyse a video, or every video of a directory: verdict, probability, members, timeline.

    Every file gets a report (ABSTAIN with a reason when it cannot be judged); the exit
    code is 0 when all did. A bundle that fails its checksums is refused (exit 2).
    """
    from veracity.analyzer import VIDEO_EXTENSIONS, Analyzer, report_text, video_files
    from veracity.ensemble import BundleError

    cfg = section(load_params(params, set_ or (), "analyze"), "analyze")
    if runtime not in ("torch", "onnx"):
        raise StageError(f"--runtime must be torch or onnx, got {runtime!r}")
    files = video_files(path) if path.is_dir() else [path]
    if path.is_dir() and not files:
        raise StageError(f"{path} holds no video files ({' '.join(VIDEO_EXTENSIONS)})")
    try:
        analyzer = Analyzer(bundle, device=device, runtime=runtime, cfg=cfg)
    except BundleError as exc:
        raise StageError(f"cannot use the bundle: {exc}") from None
    stems = [f.stem for f in files]
    reports = []
    for f in files:
        # <stem>.json, or <file name>.json when two files share a stem (a.mp4, a.mov).
        name = f.stem if stems.count(f.stem) == 1 else f.name
        report = analyzer.analyze(f, explain=explain, explain_dir=out / name if out is not None and explain else None)
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
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Robustness of every member and the fused ensemble: re-encode, corruptions, FGSM/PGD."""
    import logging
    import math

    from veracity.attack import ENSEMBLE, AttackError, run_attack
    from veracity.ensemble import BundleError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    loaded = load_params(params, set_ or (), "attack")
    for path, what in ((calibration, "calibration file (run `veracity calibrate` first)"),
                       (features / "index.csv", "features index (run `veracity extract` first)"),
                       (manifest_path, "manifest (run `veracity corpus` first)")):
        if not path.is_file():
            raise StageError(f"{what}: {path} does not exist")
    try:
        summary = run_attack(models, calibration, features, manifest_path, Path(loaded.corpus.root), loaded.attack,
                             loaded.extract, out)
    except (AttackError, BundleError, FileNotFoundError) as exc:
        raise StageError(str(exc)) from None

    def num(v: float | None) -> str:
        return "  nan" if v is None or not math.isfinite(v) else f"{v:.3f}"

    import pandas as pd

    table = pd.read_csv(out / "robustness.csv")
    ens = table[table["target"] == ENSEMBLE]
    typer.echo("clean AUC: " + ", ".join(f"{k} {num(v)}" for k, v in summary["clean"].items()))
    typer.echo("ensemble AUC (drop) per condition and strength:")
    for name, rows in ens.groupby("name", sort=False):
        cells = "  ".join(f"{r.strength:g}: {num(r.auc)} ({num(r.drop)})" for r in rows.itertuples())
        typer.echo(f"  {name:11s} {cells}")
    if summary["failed_extractions"]:
        _err(f"{summary['failed_extractions']} re-encoded clips could not be extracted (left out of their rows)")
    gate, bound = summary["gate"], loaded.register_.max_robustness_drop
    drop = gate["drop"]
    ok = drop is not None and drop <= bound
    shown = "not measured" if drop is None else f"{drop:.3f}"
    typer.echo(f"{'PASS' if ok else 'FAIL'} ensemble AUC drop under {gate['corruption']} {gate['strength']:g}: "
               f"{shown} (needs <= {bound:g})")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover - `python -m veracity.cli`
    app()
