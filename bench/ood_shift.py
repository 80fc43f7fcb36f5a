"""How often the bundle's reference profile flags synthetic distribution shift (no real data).

A small corpus of people that no split has seen is generated with the project's own
generator (the ``generate`` section of ``params.yaml``, through
:func:`veracity.stages.generate.benchmark_corpus`, with ``--seed`` and ``--people``: every
method for every person), then copied under each shift:

* ``hires``: the same people, utterances and seeds generated at ``--hires`` px square
  instead of ``generate.width`` x ``generate.height`` (the generator scales the head with
  the frame, so faces are larger in pixels). Rendered, not upscaled.
* ``control``, ``heavy_compression`` (CRF 45), ``lighting``, ``face_style`` and ``voice``:
  the transforms of :mod:`monitoring.shifts` (its docstring says what each does).

Every clip of the base and of each shift is analysed by
:class:`veracity.analyzer.Analyzer` on the CPU (the served path). Per shift the results
give the share flagged ``out_of_distribution``, other abstentions by reason, the verdicts,
the median OOD score and which parts of the profile fired (members' embedding distances,
gated media facts, facts that only note). Nothing is fitted here: it only measures.

    python bench/ood_shift.py                                   # models/bundle, 8 people
    python bench/ood_shift.py --bundle path --people 6 --shifts control voice
        [--seed 4242] [--hires 256] [--work var/ood_shift] [--workers 1]
        [--out bench/results/ood_shift.json]

The corpora live under ``--work`` (the generated ones are reused while the generator's
fingerprint holds; the derived shifts are rewritten each run). Writes ``--out`` (settings,
machine, the summary per shift and every clip) and prints a table. Not a test.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import av
import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: the repository's packages come first

from monitoring.shifts import HEAVY_CRF, make_shift, manifest_rows  # noqa: E402
from veracity.pool import run_tasks  # noqa: E402

BASE = "base"
SHIFTS = ("control", "hires", "heavy_compression", "lighting", "face_style", "voice")
OOD = "out_of_distribution"

# ------------------------------------------------------------------------------ corpora


def generate_corpora(params: Any, seed: int, people: int, hires: int | None, work: Path) -> dict[str, Path]:
    """The base corpus (and the ``hires`` one when ``hires``) of ``people`` new people.

    Both are the ``generate`` section with ``seed`` and ``people`` (as the benchmark
    corpus is made); ``hires`` only changes the frame size, so the same plan (people,
    utterances, clip seeds, video ids) is rendered larger.
    """
    from veracity.config import BenchmarkConfig, GenerateConfig
    from veracity.stages.generate import benchmark_corpus

    if seed == params.benchmark.seed:
        raise SystemExit(f"--seed {seed} is benchmark.seed: choose people neither the training nor the benchmark "
                         "corpus holds")
    bench_cfg = BenchmarkConfig(**{**params.benchmark.model_dump(), "seed": seed, "n_identities": people})
    out = {BASE: work / BASE}
    todo = [(BASE, params.generate)]
    if hires:
        out["hires"] = work / "hires"
        todo.append(("hires", GenerateConfig(**{**params.generate.model_dump(), "width": hires, "height": hires})))
    for name, gen in todo:
        t = time.perf_counter()
        got = benchmark_corpus(gen, bench_cfg, out[name])
        print(f"{name}: {'up to date' if got.skipped else f'{got.n_clips} clips generated'} "
              f"({gen.width}x{gen.height}, {time.perf_counter() - t:.0f} s)", flush=True)
    return out


# ------------------------------------------------------------------------------ analysis

def _row_of(task: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    shift, _, rec = task
    return {"shift": shift, "video_id": rec["video_id"], "label": int(rec["label"]), "method": rec["method"],
            "identity": rec["identity"]}


def _failed(analyzer: Any, task: tuple[str, str, dict[str, Any]], message: str) -> dict[str, Any]:
    """A clip whose analysis raised or killed its process: a row with verdict ERROR, never a stopped run."""
    return {**_row_of(task), "verdict": "ERROR", "reason": "error", "probability": None, "ood_score": None,
            "message": message[:300], "fired": {}, "ratios": {}, "members": {}}


def _analyse(analyzer: Any, task: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    """One clip's row."""
    row = _row_of(task)
    r = analyzer.analyze(Path(task[1]))
    ood = r.ood or {}
    person = r.persons[0] if r.persons else {}
    fired = {"members": sorted(k for k, v in (ood.get("members") or {}).items() if v.get("out")),
             "facts_gated": sorted(k for k, v in (ood.get("facts") or {}).items() if v.get("out") and v.get("gated")),
             "facts_notes": sorted(k for k, v in (ood.get("facts") or {}).items()
                                   if v.get("out") and not v.get("gated"))}
    # Every member's and gated fact's ratio (1.0 = its threshold): why a clip was not flagged.
    ratios = {**{k: v.get("ratio") for k, v in (ood.get("members") or {}).items()},
              **{k: v.get("ratio") for k, v in (ood.get("facts") or {}).items() if v.get("gated")}}
    return {**row, "verdict": r.verdict, "reason": r.reason, "probability": r.probability,
            "unreliable_probability": person.get("unreliable_probability"),
            "ood_score": ood.get("ood_score"), "face_px": (ood.get("facts") or {}).get("face_px", {}).get("value"),
            "message": r.message, "fired": fired, "ratios": ratios,
            # kept out of profile too (the report marks them unreliable there): what each member made of the shift
            "members": {k: m["probability"] for k, m in r.members.items()}}


def analyse(tasks: list[tuple[str, str, dict[str, Any]]], bundle: Path, workers: int) -> list[dict[str, Any]]:
    """Every task through an Analyzer on the CPU, in ``workers`` processes (1: in this one)."""
    rows: list[dict[str, Any]] = []

    def show(row: dict[str, Any]) -> None:
        rows.append(row)
        ood = row["ood_score"]
        print(f"[{len(rows):3d}/{len(tasks)}] {row['shift']:17s} {row['video_id']:10s} {row['method']:8s} "
              f"{row['verdict']:8s} {row['reason'] or '':19s} ood={'-' if ood is None else f'{ood:.2f}'}", flush=True)

    for row in run_tasks(tasks, _analyse, bundle, on_error=_failed, workers=max(1, workers), device="cpu"):
        show(row)
    return rows


# ------------------------------------------------------------------------------ summary


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per shift: the OOD-flag share, other abstentions, verdicts, median OOD score, parts fired
    and each part's median ratio (1.0 = its threshold)."""
    out: dict[str, Any] = {}
    for shift in dict.fromkeys(r["shift"] for r in rows):
        rs = [r for r in rows if r["shift"] == shift]
        n = len(rs)
        flagged = [r for r in rs if r["reason"] == OOD]
        other = collections.Counter(r["reason"] for r in rs if r["verdict"] in ("ABSTAIN", "ERROR") and r["reason"] != OOD)
        judged = [r for r in rs if r["reason"] in (None, OOD)]  # the profile ran on these
        scores = [r["ood_score"] for r in rs if r["ood_score"] is not None]
        fired = {part: collections.Counter(k for r in rs for k in r["fired"].get(part, []))
                 for part in ("members", "facts_gated", "facts_notes")}
        by_label = {}
        for side, label in (("authentic", 0), ("generated", 1)):
            sub = [r for r in rs if r["label"] == label]
            by_label[side] = round(sum(r["reason"] == OOD for r in sub) / len(sub), 3) if sub else None
        out[shift] = {
            "n": n,
            "ood_share": round(len(flagged) / n, 3),
            "ood_share_of_judged": round(len(flagged) / len(judged), 3) if judged else None,
            "ood_share_by_label": by_label,
            "other_abstain_share": round(sum(other.values()) / n, 3),
            "other_abstain": dict(sorted(other.items())),
            "verdicts": dict(sorted(collections.Counter(
                r["verdict"] + (f" ({r['reason']})" if r["reason"] else "") for r in rs).items())),
            "median_ood_score": round(statistics.median(scores), 3) if scores else None,
            "median_face_px": round(statistics.median(f for r in rs if (f := r.get("face_px")) is not None), 1)
            if any(r.get("face_px") is not None for r in rs) else None,
            "fired": {part: dict(c.most_common()) for part, c in fired.items()},
            "median_ratio": {part: round(statistics.median(vals), 3)
                             for part in sorted({k for r in rs for k in r["ratios"]})
                             if (vals := [v for r in rs if (v := r["ratios"].get(part)) is not None])},
        }
    return out


def print_table(summary: dict[str, Any]) -> None:
    """One line per shift."""
    print(f"\n{'shift':17s} {'n':>4s} {'OOD':>6s} {'other':>6s} {'med':>5s}  parts fired (clips)")
    for shift, s in summary.items():
        parts = ", ".join(f"{k}:{v}" for part in ("members", "facts_gated", "facts_notes")
                          for k, v in s["fired"][part].items()) or "-"
        med = "-" if s["median_ood_score"] is None else f"{s['median_ood_score']:.2f}"
        print(f"{shift:17s} {s['n']:4d} {s['ood_share']:6.2f} {s['other_abstain_share']:6.2f} {med:>5s}  {parts}")
        if s["other_abstain"]:
            print(f"{'':17s} other: {s['other_abstain']}")


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=REPO / "models" / "bundle")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--people", type=int, default=8,
                    help="new people, every method each (at least 6 with params' split ratios: "
                         "fakes borrow a second person from the same split)")
    ap.add_argument("--seed", type=int, default=4242, help="corpus seed; not generate.seed nor benchmark.seed")
    ap.add_argument("--hires", type=int, default=256, help="frame side of the hires shift")
    ap.add_argument("--shifts", nargs="+", choices=SHIFTS, default=list(SHIFTS))
    ap.add_argument("--work", type=Path, default=REPO / "var" / "ood_shift", help="where the corpora are written")
    ap.add_argument("--workers", type=int, default=1, help="analysis processes, one bundle each")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ood_shift.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import torch

    from veracity.config import load_params

    params = load_params(args.params)
    t0 = time.perf_counter()
    work = args.work / f"seed{args.seed}_people{args.people}"
    corpora = generate_corpora(params, args.seed, args.people, args.hires if "hires" in args.shifts else None, work)
    for name in args.shifts:
        if name != "hires":
            corpora[name] = make_shift(name, corpora[BASE], work, params.generate)
    t_make = time.perf_counter() - t0

    tasks = [(name, str(corpora[name] / rec["path"]), rec)
             for name in [BASE, *args.shifts] for rec in manifest_rows(corpora[name])]
    t1 = time.perf_counter()
    rows = analyse(tasks, args.bundle, args.workers)
    t_analyse = time.perf_counter() - t1
    summary = summarise(rows)
    result = {
        "bundle": str(args.bundle.resolve()),
        "settings": {"seed": args.seed, "people": args.people, "shifts": [BASE, *args.shifts], "hires": args.hires,
                     "heavy_crf": HEAVY_CRF, "work": str(work), "workers": args.workers,
                     "generate": params.generate.model_dump(mode="json")},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "torch": torch.__version__, "pyav": av.__version__, "opencv": cv2.__version__,
                    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")},
        "seconds": {"make": round(t_make, 1), "analyse": round(t_analyse, 1),
                    "total": round(time.perf_counter() - t0, 1)},
        "summary": summary,
        "clips": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print_table(summary)
    print(f"\nwrote {args.out} ({result['seconds']['total']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
