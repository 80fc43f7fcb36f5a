"""Quality over seeds: the whole DAG from clean clones with different seeds, figures side by side.

Each run is a fresh ``git clone`` of this repository's HEAD, with one seed changed in its
``params.yaml``, then ``make pipeline`` (set-up, corpus, ``dvc repro``, summary). The
benchmark corpus is the same in every run (``benchmark.seed`` is not varied), so the
spread is the spread of the trained bundle, not of the yardstick.

    python bench/seeds.py                      # generate.seed 1337, 1, 2: a new training corpus each
    python bench/seeds.py --vary train.seed --seeds 1 2 --from /tmp/veracity-seeds/generate-seed-1337

``--vary generate.seed`` moves everything downstream of the corpus (people, clips, splits
and so training); ``--vary train.seed`` keeps the corpus and moves only training's
randomness (initialisation, batches, augmentation); ``--vary benchmark.seed`` keeps the
bundle and draws another benchmark corpus (new people), which tells the yardstick's own
draw from an offset of the bundle. Comparing the spreads says which stage's randomness moves
the figures most. ``--from DIR`` starts each run from a copy of a
finished run (its environment linked, its MLflow store dropped) instead of a clone, so
``dvc repro`` reruns only what the changed seed touches.

Writes ``bench/results/seeds-<key>.json``: per run, the wall time, whether a champion was
promoted, the gate's reasons and the benchmark's figures with intervals; then mean, standard
deviation, min and max of each figure over the runs. Not a test: three runs take about an
hour on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIGURES = ("auc", "ap", "ece", "brier", "fpr", "tpr", "uncertain_rate", "abstain_rate")


def set_param(params: str, dotted: str, value: int) -> str:
    """``params.yaml`` text with ``section.key`` set (the first ``key:`` inside ``section:``)."""
    section, key = dotted.split(".")
    block = re.search(rf"^{section}:.*?(?=^\S|\Z)", params, flags=re.S | re.M)
    if block is None:
        raise SystemExit(f"no section {section!r} in params.yaml")
    body, n = re.subn(rf"^(  {key}:)\s*[^#\n]*", rf"\g<1> {value}", block.group(0), count=1, flags=re.M)
    if n != 1:
        raise SystemExit(f"no key {dotted!r} in params.yaml")
    return params[:block.start()] + body + params[block.end():]


def run_one(work: Path, key: str, seed: int, log: Path, start: Path | None = None) -> dict[str, Any]:
    """Clone (or copy ``start``), set the seed, run ``make pipeline``; the run's figures."""
    if start is None:
        subprocess.run(["git", "clone", "-q", str(REPO), str(work)], check=True)
    else:
        shutil.copytree(start, work, symlinks=True,
                        ignore=shutil.ignore_patterns(".venv", ".tools", "mlflow.db", "mlartifacts"))
        for env in (".venv", ".tools"):
            (work / env).symlink_to(start.resolve() / env)
    params = work / "params.yaml"
    params.write_text(set_param(params.read_text(), key, seed))
    t0 = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.run(["make", "pipeline"], cwd=work, stdout=fh, stderr=subprocess.STDOUT).returncode
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True).stdout.strip()
    out: dict[str, Any] = {"seed": seed, "rc": rc, "minutes": round((time.perf_counter() - t0) / 60, 2),
                           "log": str(log), "commit": commit, "from": str(start) if start else None}
    bench, reg = work / "reports/benchmark/metrics.json", work / "reports/register/summary.json"
    if bench.is_file():
        b = json.loads(bench.read_text())
        out["benchmark"] = {k: b["ensemble"][k] for k in FIGURES}
        out["benchmark"]["reencode_drop"] = b["reencode"]["drop"]
        out["per_method"] = {m: v["ensemble"] for m, v in b["per_method"].items()}
        out["members"] = {m: v["auc"] for m, v in b["members"].items()}
        out["video_on_lipsync"] = b["per_method"].get("lipsync", {}).get("video_specialist")
    if reg.is_file():
        r = json.loads(reg.read_text())
        out.update(promoted=r["promoted"], champion_version=r["champion_version"], reasons=r["reasons"])
    status = subprocess.run(["git", "status", "--porcelain"], cwd=work, capture_output=True, text=True).stdout
    out["git_status"] = status.strip().splitlines()
    return out


def spread(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, standard deviation, min and max of every point figure over the runs that finished."""
    values: dict[str, list[float]] = {}
    for r in runs:
        flat = {**{k: v["value"] for k, v in r.get("benchmark", {}).items()},
                **{f"method.{m}": v["value"] for m, v in r.get("per_method", {}).items()},
                **{f"member.{m}": v["value"] for m, v in r.get("members", {}).items()}}
        for k, v in flat.items():
            if v is not None:
                values.setdefault(k, []).append(float(v))
    return {k: {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0,
                "min": min(v), "max": max(v), "n": len(v)} for k, v in values.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vary", default="generate.seed", choices=["generate.seed", "train.seed", "benchmark.seed"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    ap.add_argument("--work", type=Path, default=Path("/tmp/veracity-seeds"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--from", dest="start", type=Path, default=None,
                    help="start each run from a copy of this finished run instead of a clean clone")
    args = ap.parse_args()
    out = args.out or REPO / "bench" / "results" / f"seeds-{args.vary.replace('.', '-')}.json"
    args.work.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    runs = []
    for seed in args.seeds:
        work = args.work / f"{args.vary.replace('.', '-')}-{seed}"
        if work.exists():
            raise SystemExit(f"{work} exists: remove it or pass another --work")
        print(f"{args.vary}={seed}: make pipeline in {work} ...", flush=True)
        runs.append(run_one(work, args.vary, seed, args.work / f"{work.name}.log", args.start))
        r = runs[-1]
        auc = r.get("benchmark", {}).get("auc", {}).get("value")
        print(f"  rc {r['rc']}, {r['minutes']} min, promoted {r.get('promoted')}, benchmark AUC {auc}", flush=True)
        result = {"commit": commit, "vary": args.vary, "from": str(args.start) if args.start else None, "runs": runs,
                  "spread": spread(runs)}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    for k, v in result["spread"].items():
        print(f"  {k:28s} mean {v['mean']:.4f}  sd {v['sd']:.4f}  [{v['min']:.4f}, {v['max']:.4f}]")
    return 0 if all(r["rc"] == 0 and r.get("promoted") for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
